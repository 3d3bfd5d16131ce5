"""CPU A/B of this session's GEMM changes, each measured in one process, alternating per prompt, over
4 HumanEval + 4 MT-Bench prompts at the app's CPU defaults (budget 16, topb K = 7, 128 new tokens, fp32,
greedy), twice. Usage: PYTHONPATH=. python3 docs/measured/cpu-ab.py padding|layout|gemm
  padding: lm_head rows padded to 16 off / on (model.CPU_PAD_ROWS), plus plain decoding
  layout:  projection weights row-major / column-major, JetSpec and plain decoding
  gemm:    no model: fp32 F.linear ms per call at SmolLM2's shapes (random weights) by row count —
           the lm_head row-major, the projections row-major / column-major"""
import sys
import time

import torch
import torch.nn.functional as F

import jetspec_core.model as M
from jetspec_core.bench.datasets import load_dataset, spread
from jetspec_core.config import DecodeConfig
from jetspec_core.loading import load_decoder

what = sys.argv[1]
if what == "gemm":
    def ms(fn, reps=20):
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps * 1e3

    g = torch.Generator().manual_seed(0)
    for n_out, k in ((49152, 576), (576, 576), (1536, 576), (576, 1536)):
        w = torch.randn(n_out, k, generator=g)
        layouts = {"row-major": w} if n_out == 49152 else {"row-major": w, "column-major": w.t().contiguous().t()}
        for name, wl in layouts.items():
            cells = []
            for m in (1, 8, 15, 16, 32):
                x = torch.randn(m, k, generator=g)
                cells.append(f"{m}: {ms(lambda: F.linear(x, wl)):.3f}")
            print(f"{n_out:6d} x {k:4d} {name:12s} ms by rows  " + "  ".join(cells))
    sys.exit(0)
L = load_decoder(device="cpu", dtype="float32", engine="reference")
dec, t = L.decoder, L.target
ids = [t.encode_prompt(p.text, chat=True)
       for ds in ("humaneval", "mtbench") for p in spread(load_dataset(ds, ".benchdata"), 4)]
spec = DecodeConfig(mode="jetspec", budget=16, builder="topb", width=7, max_new_tokens=128)
plain = DecodeConfig(mode="plain", max_new_tokens=128)
params = t.model.linear_weights() + [p for n, p in dec.drafter.head.named_parameters() if p.dim() == 2 and "layers" in n]
row = [p.data.contiguous() for p in params]            # the Decoder stores them column-major
col = [d.t().contiguous().t() for d in row]
pad_on, pad_off = M.CPU_PAD_ROWS, (10**6, 10**6 + 1)


def setting(name):
    M.CPU_PAD_ROWS = pad_off if name == "pad off" else pad_on
    for p, d in zip(params, row if name == "row-major" else col):
        p.data = d


arms = ({"pad off": [spec], "pad on": [spec], "plain": [plain]} if what == "padding"
        else {"row-major": [spec, plain], "column-major": [spec, plain]})
dec.generate(ids[0], DecodeConfig(**dict(spec.to_dict(), max_new_tokens=8)))
tot, outs = {}, {}
for rep in range(2):
    for i, x in enumerate(ids):
        for name, cfgs in arms.items():
            setting(name)
            for cfg in cfgs:
                t0 = time.perf_counter()
                _, recs = dec.generate(x, cfg)
                dt = time.perf_counter() - t0
                new = [tok for r in recs for tok in r.new_tokens]
                outs.setdefault(i, set()).add(tuple(new))
                a = tot.setdefault((name, cfg.mode), [0.0, 0, 0.0, 0.0, 0])
                a[0] += dt
                a[1] += len(new)
                a[2] += sum(r.timings["draft"] for r in recs) * 1e3
                a[3] += sum(r.timings["verify"] for r in recs) * 1e3
                a[4] += len(recs)
for (name, mode), (dt, n, d, v, r) in tot.items():
    print(f"{name:13s} {mode:8s} tok/s {n / dt:6.2f}   draft {d / r:5.1f}  verify {v / r:5.1f} ms/round")
print("outputs equal in every arm:", all(len(o) == 1 for o in outs.values()))
