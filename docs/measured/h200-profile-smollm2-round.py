"""Kernel-level profile of the embedded SmolLM2 with the shipped head on the engine (bf16, the
default batch-invariant mode, topb K = 16): plain steps and rounds at budgets 64 and 256, eager
(no graphs) so every kernel shows. Prints per run: device time per step / round, kernel launches
per step / round, and the top kernels. Run from the repo root with JETSPEC_GGUF set."""
import torch
from torch.profiler import ProfilerActivity, profile

from jetspec_core.config import DecodeConfig
from jetspec_core.loading import load_decoder

loaded = load_decoder(head="assets/head", device="cuda", dtype="bfloat16", engine="fast")
dec = loaded.decoder
dec.graphs = False
print(dec.describe())
ids = loaded.target.encode_prompt("Write a Python function that returns the n-th Fibonacci number.")
for name, cfg in (("plain", DecodeConfig(mode="plain", max_new_tokens=48, stop_at_eos=False)),
                  ("topb16-b64", DecodeConfig(budget=64, builder="topb", width=16, max_new_tokens=48,
                                              stop_at_eos=False, calibrate=False)),
                  ("topb16-b256", DecodeConfig(budget=256, builder="topb", width=16, max_new_tokens=48,
                                               stop_at_eos=False, calibrate=False))):
    dec.generate(ids, cfg)  # warm-up (compiles, captures nothing: eager)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out, _ = dec.generate(ids, cfg)
        torch.cuda.synchronize()
    ka = prof.key_averages()
    tot = sum(e.self_device_time_total for e in ka)
    launches = sum(e.count for e in ka if e.self_device_time_total > 0)
    r = out.rounds
    print(f"\n==== {name}: {r} rounds (prefill included in the totals)  device {tot / r:.0f} us/round, "
          f"{launches / r:.0f} kernels/round")
    for e in sorted(ka, key=lambda e: -e.self_device_time_total)[:24]:
        t = e.self_device_time_total
        if t > 0:
            print(f"{t / r:8.1f} us/round {100 * t / tot:5.1f}% {e.count / r:6.1f}/round  {e.key[:100]}")
