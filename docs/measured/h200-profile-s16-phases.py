"""Kernel profile of each round phase (draft, tree, verify, accept) of the engine with the
shipped head, eager (graphs off, so every kernel shows), topb K = 16, budgets 64 and 256 and the
plain step, in both engine modes (batch-invariant and cuBLAS). Each phase method is wrapped in a
record_function range and the device kernels launched inside it are summed by name.
Run from the repo root with JETSPEC_GGUF set: python3 docs/measured/h200-profile-s16-phases.py"""
import collections
import sys

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from jetspec_core.config import DecodeConfig
from jetspec_core.drafter import HeadDrafter
from jetspec_core.engine.runner import FastDecoder
from jetspec_core.loading import load_decoder

PHASES = ("_draft", "_tree", "_verify", "_accept", "_plain_step")
budgets = [int(b) for b in (sys.argv[1] if len(sys.argv) > 1 else "64,256").split(",")]
loaded = load_decoder(head="assets/head", device="cuda", dtype="bfloat16", engine="fast")
ids = loaded.target.encode_prompt("Write a Python function that returns the n-th Fibonacci number.")


def wrap(dec):
    for name in PHASES:
        fn = getattr(dec, name)

        def run(*a, _fn=fn, _name=name, **k):
            with record_function("phase" + _name):
                r = _fn(*a, **k)
                torch.cuda.synchronize()   # so every kernel of the phase starts inside its range
                return r
        setattr(dec, name, run)


def attribute(prof):
    """Device kernels by the innermost phase range (host clock) their start falls in."""
    evs = prof.events()
    ranges = sorted(((e.time_range.start, e.time_range.end, e.name) for e in evs
                     if e.name.startswith("phase_") and e.device_type == DeviceType.CPU), key=lambda r: r[0])
    per = collections.defaultdict(collections.Counter)
    num = collections.defaultdict(collections.Counter)
    calls = collections.Counter(r[2] for r in ranges if not any(o[0] < r[0] and r[1] < o[1] for o in ranges))
    for e in evs:
        if e.device_type != DeviceType.CUDA:
            continue
        inside = [r for r in ranges if r[0] <= e.time_range.start <= r[1]]
        if not inside:
            continue
        ph = min(inside, key=lambda r: r[1] - r[0])[2]
        outer = max(inside, key=lambda r: r[1] - r[0])[2]
        for name in {ph, outer}:
            per[name][e.name] += e.time_range.end - e.time_range.start
            num[name][e.name] += 1
    return per, num, calls


for bi in (True, False):
    dec = FastDecoder(loaded.target, HeadDrafter(loaded.decoder.head, loaded.target.model), graphs=False, batch_invariant=bi)
    wrap(dec)
    cfgs = [("plain", DecodeConfig(mode="plain", max_new_tokens=48, stop_at_eos=False))]
    cfgs += [(f"b{b}", DecodeConfig(budget=b, builder="topb", width=16, max_new_tokens=48, stop_at_eos=False,
                                    calibrate=False)) for b in budgets]
    for name, cfg in cfgs:
        dec.generate(ids, cfg)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            out, _ = dec.generate(ids, cfg)
            torch.cuda.synchronize()
        per, num, count = attribute(prof)
        print(f"\n==== bi={bi} {name}: {out.rounds} rounds")
        for ph in sorted(per):
            tot = sum(per[ph].values())
            n = max(count[ph], 1)
            print(f"  {ph}: {tot / n:8.1f} us/call over {count[ph]} calls, {sum(num[ph].values()) / n:.1f} kernels/call")
            for k, v in per[ph].most_common(12):
                print(f"      {v / n:7.1f} us {num[ph][k] / n:5.1f}x  {k[:100]}")
