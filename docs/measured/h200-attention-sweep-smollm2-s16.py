"""Tree-attention launch configs for SmolLM2-135M's heads (9 query, 3 KV heads, head_dim 64) as
the engine calls the kernel: the prefix length as a device tensor, K/V of the cache's capacity
(1,024 rows), N tree rows. GPU µs per call from CUDA-graph replay (the kernel bench's timer), for
each (block_m, block_n, num_stages) × split count, against `default_config`.
Run from the repo root: python3 docs/measured/h200-attention-sweep-smollm2-s16.py [out.json]"""
import itertools
import json
import sys

import torch

from jetspec_core.bench.kernels import Timer, _ancestors, _random_tree
from jetspec_core.kernels import tree_attention as ta

hq, hkv, d, cap = 9, 3, 64, 1024
timer = Timer(20, False)
gen = torch.Generator().manual_seed(0)
dev = torch.device("cuda")
rows = []
for n, p in itertools.product((1, 16, 64, 128, 256), (300, 700)):
    q = torch.randn(n, hq, d, generator=gen).to(dev, torch.bfloat16).transpose(0, 1)
    k = torch.randn(hkv, cap, d, generator=gen).to(dev, torch.bfloat16)
    v = torch.randn(hkv, cap, d, generator=gen).to(dev, torch.bfloat16)
    bits = ta.pack_ancestor_bits(_ancestors(_random_tree(n, gen), dev))
    plen = torch.tensor([p], device=dev, dtype=torch.int32)
    base = ta.default_config(n, hq // hkv, hkv, d, cap - n, torch.bfloat16, dev)
    ref = ta.tree_attention_triton(q, k, v, plen, bits)
    row = {"N": n, "prefix": p, "default": base, "default_us": timer(lambda: ta.tree_attention_triton(q, k, v, plen, bits))}
    trials = []
    for bm, bn, st, sp in itertools.product((16, 32, 64), (32, 64), (3,), (1, 2, 3, 4, 6)):
        if bm > 16 and n * (hq // hkv) <= 16:
            continue
        c = {"block_m": bm, "block_n": bn, "num_warps": 4, "num_stages": st, "splits": sp}
        out = ta.tree_attention_triton(q, k, v, plen, bits, config=c)
        err = (out.float() - ref.float()).abs().max().item()
        t = timer(lambda: ta.tree_attention_triton(q, k, v, plen, bits, config=c))
        trials.append({"config": c, "us": t, "max_diff": err})
    trials.sort(key=lambda r: r["us"])
    row["best"] = trials[:5]
    rows.append(row)
    print(f"N {n:3d} prefix {p}: default {row['default_us']:.2f} us {base} | best "
          + " ; ".join(f"{r['us']:.2f} {r['config']}" for r in trials[:3]), flush=True)
if len(sys.argv) > 1:
    json.dump(rows, open(sys.argv[1], "w"), indent=1)
