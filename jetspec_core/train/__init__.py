"""Training a draft head by self-distillation (DESIGN §1 training, §4 data).

`prompts` builds the offline prompt set, `distill` has the target answer it (the training data,
stored with a tokenizer fingerprint by `data`), `teacher` runs the frozen target over whole
sequences for hidden states and soft labels, `trainer` fits one or more heads, `cli` wires
`python -m jetspec_core train ...`.
"""
