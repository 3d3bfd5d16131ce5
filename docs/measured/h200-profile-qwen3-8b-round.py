"""Kernel-level profile of the Qwen3-8B-shaped cost run (random bf16 weights, prefix 512, the
bench's default builder): plain steps and budget-256 rounds, eager (no graphs) so every kernel
shows. Prints per run: device time and kernel launches per step / round, and the top kernels."""
import torch
from torch.profiler import ProfilerActivity, profile

from jetspec_core.bench.speed import SHAPES, random_target
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
        out, _ = dec.generate(ids, cfg)
        torch.cuda.synchronize()
    ka = prof.key_averages()
    tot = sum(e.self_device_time_total for e in ka)
    launches = sum(e.count for e in ka if e.self_device_time_total > 0)
    r = out.rounds
    print(f"\n==== {name}: {r} rounds (prefill included in the totals)  device {tot / r:.0f} us/round, "
          f"{launches / r:.0f} kernels/round")
    for e in sorted(ka, key=lambda e: -e.self_device_time_total)[:30]:
        t = e.self_device_time_total
        if t > 0:
            print(f"{t / r:8.1f} us/round {100 * t / tot:5.1f}% {e.count / r:6.1f}/round  {e.key[:100]}")
