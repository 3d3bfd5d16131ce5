"""CPU A/B of this session's GEMM changes, each measured in one process, alternating per prompt, over
4 HumanEval + 4 MT-Bench prompts at the app's CPU defaults (budget 16, topb K = 7, 128 new tokens, fp32,
greedy), twice. Usage: PYTHONPATH=. python3 docs/measured/cpu-ab.py padding|layout
  padding: lm_head rows padded to 16 off / on (model.CPU_PAD_ROWS), plus plain decoding
  layout:  projection weights row-major / column-major, JetSpec and plain decoding"""
import sys
import time

import jetspec_core.model as M
from jetspec_core.bench.datasets import load_dataset, spread
from jetspec_core.config import DecodeConfig
from jetspec_core.loading import load_decoder

what = sys.argv[1]
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
