"""Paired, teacher-forced comparison of draft heads on the same answer files (CPU, fp32).

For every anchor of every answer (the same anchors for each head) and depth d it measures
- greedy: head argmax == target argmax at depth d (the trainer's top-1; its running product is
  the greedy chain acceptance), and
- sampled: Σ_v min(p_head(v), p_target(v)) at temperature T, the probability that a one-token
  draft sampled from the head survives the target's rejection test (its running product is the
  sampled chain acceptance of a one-candidate-per-depth draft).

usage: python docs/measured/cpu-head-proxy.py DATA.safetensors [...] --heads A B [--temperature 0.8]
The answers come from `python -m jetspec_core train data` (greedy, or `--temperature 0.8` for sampled)."""
from __future__ import annotations

import argparse
import json
import sys

import torch

from jetspec_core.head import DraftHead
from jetspec_core.loading import pick_mask_token
from jetspec_core.target import load_target
from jetspec_core.train.data import DistillData
from jetspec_core.train.teacher import teacher_model
from jetspec_core.train.trainer import TrainConfig, Trainer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="+")
    ap.add_argument("--heads", nargs="+", required=True)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--anchors", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    data = DistillData.concat([DistillData.load(x) for x in a.data], list(a.data))
    target = load_target(None, device="cpu", dtype="float32")
    hf = teacher_model(target)
    cfg = TrainConfig(layers=(3,), holdout=0.0, batch_size=a.batch_size, eval_anchors=a.anchors)
    tr = Trainer(hf, data, cfg, pick_mask_token(target), "/tmp/proxy-unused", progress=False)
    idx = list(range(len(data)))                           # every sequence, each head the same anchors
    students = {}
    for path in a.heads:
        students[path] = DraftHead.load(path, device="cpu", dtype=torch.float32).eval()
    B, T = cfg.block_size, a.temperature
    acc = {p: {"top1": torch.zeros(B - 1), "ovl": torch.zeros(B - 1), "n": torch.zeros(B - 1),
               "gchain": 0.0, "schain": 0.0, "full": 0} for p in a.heads}
    for j in range(0, len(idx), a.batch_size):
        gen = torch.Generator().manual_seed(1234 + j)
        bt = tr._batch_for(idx[j:j + a.batch_size], gen, a.anchors)
        taps, t_logits, valid = tr._teacher(bt)
        t_top, t_p = t_logits.argmax(-1), torch.softmax(t_logits.float() / T, -1)
        full = valid.all(-1)
        for p, head in students.items():
            s = tr._student(head, bt, taps, valid).float()
            top1 = torch.zeros(valid.shape)
            ovl = torch.zeros(valid.shape)
            top1[valid] = (s.argmax(-1) == t_top).float()
            ovl[valid] = torch.minimum(torch.softmax(s / T, -1), t_p).sum(-1)
            st = acc[p]
            st["top1"] += top1.sum((0, 1)); st["ovl"] += ovl.sum((0, 1)); st["n"] += valid.sum((0, 1)).float()
            st["gchain"] += float(top1[full].cumprod(-1).sum()); st["schain"] += float(ovl[full].cumprod(-1).sum())
            st["full"] += int(full.sum())
        print(f"[proxy] {min(j + a.batch_size, len(idx))}/{len(idx)} sequences", file=sys.stderr, flush=True)
    out = {"data": a.data, "temperature": T, "anchors_per_sequence": a.anchors, "heads": {}}
    for p, st in acc.items():
        n = st["n"].clamp(min=1)
        out["heads"][p] = {"greedy_chain_tau": round(1 + st["gchain"] / max(1, st["full"]), 4),
                           "sampled_chain_tau": round(1 + st["schain"] / max(1, st["full"]), 4),
                           "top1_per_depth": [round(x, 4) for x in (st["top1"] / n).tolist()],
                           "overlap_per_depth": [round(x, 4) for x in (st["ovl"] / n).tolist()],
                           "anchors": st["full"]}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
