"""Session 19: where does the round's GPU time go? torch.profiler over budget-64 rounds (and plain steps) of a few
HumanEval prompts; prints kernel busy time vs window, the largest idle gaps and the kernels around them.
Run from a repository root (the engine under test): python3 prof.py <out-prefix>"""
import collections, json, sys, time, torch
from jetspec_core.bench.datasets import load_dataset, spread
from jetspec_core.config import DecodeConfig
from jetspec_core.drafter import HeadDrafter
from jetspec_core.engine import FastDecoder
from jetspec_core.loading import load_head
from jetspec_core.target import load_target
from torch.profiler import profile, ProfilerActivity

import os
out, data, head_dir = sys.argv[1], sys.argv[2], sys.argv[3]
dev = os.environ.get("PDEV", "cuda")
target = load_target(None, device=dev, dtype="bfloat16" if dev == "cuda" else "float32")
head, _ = load_head(head_dir, target)
dec = FastDecoder(target, HeadDrafter(head, target.model))
prompts = [target.encode_prompt(p.text) for p in spread(load_dataset("humaneval", data), 8)][:3]
dec.reserve(max(map(len, prompts)) + 256 + 2 * (64 + dec.d1) + 8)
base = dict(max_new_tokens=int(os.environ.get("PNEW", 256)), stop_at_eos=True, builder="topb", width=16, calibrate=False)
res = {}
for name, cfg in (("plain", DecodeConfig(mode="plain", **base)), ("b64", DecodeConfig(budget=64, **base))):
    for p in prompts:
        dec.generate(p, cfg)  # capture + warm
    if dev == "cuda": torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        n_rounds = n_tok = 0
        for p in prompts:
            s, recs = dec.generate(p, cfg)
            n_rounds += len(recs); n_tok += len(s.token_ids)
        if dev == "cuda": torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    ev = [e for e in prof.events() if e.device_type == (torch.autograd.DeviceType.CUDA if dev == "cuda" else torch.autograd.DeviceType.CPU) and e.time_range.elapsed_us() >= 0]
    kern = sorted(((e.time_range.start, e.time_range.end, e.name) for e in ev if "Memcpy" not in e.name and "Memset" not in e.name))
    if not kern:
        res[name] = {"note": "no kernel events"}; continue
    busy, cur_s, cur_e = 0.0, kern[0][0], kern[0][1]
    gaps = []
    prev_name = kern[0][2]
    for s_, e_, nm in kern[1:]:
        if s_ > cur_e:
            busy += cur_e - cur_s
            gaps.append((s_ - cur_e, prev_name[:60], nm[:60]))
            cur_s, cur_e = s_, e_
        else:
            cur_e = max(cur_e, e_)
        prev_name = nm if e_ >= cur_e else prev_name
    busy += cur_e - cur_s
    window = kern[-1][1] - kern[0][0]
    big = [g for g in gaps if g[0] > 3]
    pairs = collections.Counter((g[1], g[2]) for g in big)
    gap_by_pair = collections.defaultdict(float)
    for g in big:
        gap_by_pair[(g[1], g[2])] += g[0]
    top = sorted(gap_by_pair.items(), key=lambda kv: -kv[1])[:12]
    names = collections.Counter(k[2][:50] for k in kern)
    res[name] = {"rounds": n_rounds, "tokens": n_tok, "wall_ms": wall * 1e3, "window_ms": window / 1e3,
                 "busy_ms": busy / 1e3, "kernels": len(kern), "kernels_per_round": len(kern) / n_rounds,
                 "gaps_gt3us": len(big), "gap_gt3us_ms": sum(g[0] for g in big) / 1e3,
                 "gap_all_ms": sum(g[0] for g in gaps) / 1e3,
                 "per_round_us": {"window": window / n_rounds, "busy": busy / n_rounds,
                                  "gaps": sum(g[0] for g in gaps) / n_rounds},
                 "top_gaps": [{"prev": a, "next": b, "count": pairs[(a, b)], "total_us": t} for (a, b), t in top],
                 "top_kernels": names.most_common(25)}
    print(name, json.dumps({k: v for k, v in res[name].items() if k not in ("top_gaps", "top_kernels")}))
    for g in res[name]["top_gaps"][:8]:
        print("   gap", g)
    prof.export_chrome_trace(f"{out}-{name}.trace.json")
json.dump(res, open(f"{out}.json", "w"), indent=1)
