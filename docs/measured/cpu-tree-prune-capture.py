# run from the repository root: PYTHONPATH=. python3 docs/measured/cpu-tree-prune-capture.py
import torch
from jetspec_core.loading import load_decoder
from jetspec_core.config import DecodeConfig
loaded = load_decoder(head="assets/head", device="cpu", dtype="float32")
dec = loaded.decoder
ids = loaded.target.encode_prompt("Write a Python function that returns the n-th Fibonacci number.")
# capture the drafter's per-depth log-probs over a few rounds
dr = dec.drafter
got = []
orig = dr.propose
def spy(*a, **k):
    out = orig(*a, **k); got.append(out.detach().clone()); return out
dr.propose = spy
dec.generate(ids, DecodeConfig(budget=64, builder="topb", width=16, max_new_tokens=40, calibrate=False))
torch.save(got, "/tmp/dlogp.pt")
print(len(got), got[0].shape)
