"""Kernel-level profile of the Qwen3-8B-shaped cost run (random bf16 weights): plain steps and
budget-256 rounds, eager (no graphs) so every kernel shows; prints the top kernels per run."""
import sys, torch
from torch.profiler import profile, ProfilerActivity
from jetspec_core.bench.speed import random_target, SHAPES
from jetspec_core.config import DecodeConfig
from jetspec_core.drafter import HeadDrafter
from jetspec_core.engine import FastDecoder
from jetspec_core.head import DraftHead, HeadConfig

dev = torch.device("cuda")
shape, hl, mask = SHAPES["qwen3-8b"]
target = random_target(shape, dev, torch.bfloat16)
hc = HeadConfig.for_target(target.shape, mask_token_id=mask, num_layers=hl, num_taps=5)
with torch.device("meta"):
    head = DraftHead(hc)
head = head.to_empty(device=dev)
g = torch.Generator(device=dev).manual_seed(1)
with torch.no_grad():
    for p in head.parameters():
        p.normal_(0.0, 0.02, generator=g) if p.dim() == 2 else p.fill_(1.0)
head = head.to(dtype=torch.bfloat16).eval()
dec = FastDecoder(target, HeadDrafter(head, target.model), graphs=False)
print(dec.describe())
ids = torch.randint(0, shape["vocab_size"], (512,), generator=torch.Generator().manual_seed(0)).tolist()
dec.reserve(512 + 96 + 2 * (256 + dec.d1) + 8)
for name, cfg in (("plain", DecodeConfig(mode="plain", max_new_tokens=24, stop_at_eos=False)),
                  ("spec256", DecodeConfig(budget=256, max_new_tokens=24, stop_at_eos=False))):
    dec.generate(ids, DecodeConfig(**dict(cfg.to_dict(), max_new_tokens=4)))
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out, _recs = dec.generate(ids, cfg)
        torch.cuda.synchronize()
    rounds = out.rounds
    print(f"\n==== {name}: rounds ~{rounds}")
    ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, 'self_device_time_total', 0) > 0]
    tot = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages())
    print(f"total device us {tot:.0f}")
    for e in sorted(prof.key_averages(), key=lambda e: -getattr(e, "self_device_time_total", 0))[:28]:
        t = getattr(e, "self_device_time_total", 0)
        if t <= 0:
            continue
        print(f"{t:10.0f} us {100*t/tot:5.1f}% n={e.count:6d}  {e.key[:110]}")
