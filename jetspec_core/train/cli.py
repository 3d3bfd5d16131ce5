"""`python -m jetspec_core train prompts|data|fit|calibrate`: the prompt set, self-distillation, training.

    train prompts --out prompts.jsonl                 # the offline prompt set (seeded)
    train data --prompts prompts.jsonl --out d.safetensors --max-new-tokens 320
    CUDA_VISIBLE_DEVICES=1 train data --prompts prompts.jsonl --shard 1/2 ...   # one slice per GPU
    train fit --data d.safetensors --out runs/head --layers 1 2 3 --time-limit 240
    train calibrate --head runs/head/head --exclude prompts.jsonl        # tree-score calibration

`fit` writes one published-format head per layer count (out/L1, out/L2, ...), copies the one
with the best held-out chain acceptance to out/head, and a `train_report.json`. It checkpoints
to out/checkpoint.pt; `--resume` continues from there exactly. Under
`torchrun --nproc-per-node N -m jetspec_core train fit ...` it trains data-parallel on N GPUs
(the same steps and batches as one process, N times the throughput).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from ..errors import JetSpecError
from .trainer import KL_KERNELS, TrainConfig

_T = TrainConfig()  # the one place training defaults come from


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default=None, help="HF model folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_prompts(a: argparse.Namespace) -> int:
    from .prompts import build_prompts, save_prompts

    prompts = build_prompts(a.count, a.seed)
    if a.out:
        digest = save_prompts(prompts, a.out)
        kinds: dict[str, int] = {}
        for p in prompts:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        print(json.dumps({"out": a.out, "prompts": len(prompts), "sha256": digest, "kinds": kinds}))
    for p in prompts[: a.show]:
        print(f"--- {p.kind}\n{p.text}")
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from ..target import load_target
    from .distill import distill
    from .prompts import build_prompts, load_prompts, parse_shard, select_prompts
    from .teacher import teacher_model

    shard = parse_shard(a.shard)  # validate before the slow loads
    if a.prompts:
        prompts, digest = load_prompts(a.prompts)
    else:
        prompts, digest = build_prompts(a.count, a.seed), f"built:count={a.count}:seed={a.seed}"
    prompts = select_prompts(prompts, a.kinds, a.limit, shard)
    if not prompts:
        raise JetSpecError("no prompts left after --kinds/--limit/--shard")
    target = load_target(a.target, device=a.device, dtype=a.dtype)
    hf = teacher_model(target)
    data = distill(target, hf, prompts, a.max_new_tokens, a.batch_size, a.temperature, a.seed, a.time_limit,
                   a.max_prompt_tokens, progress=not a.no_progress, samples=a.samples,
                   meta={"prompts_sha256": digest, "command": " ".join(sys.argv)})
    data.save(a.out)
    print(json.dumps({"out": a.out, "sequences": len(data), "response_tokens": data.response_tokens,
                      **{k: data.meta[k] for k in ("seconds", "ended_with_eos", "prompts_offered")}}))
    return 0


def _train_config(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(layers=tuple(a.layers), steps=a.steps, time_limit_s=a.time_limit, batch_size=a.batch_size,
                       anchors=a.anchors, lr=a.lr, warmup=a.warmup, holdout=a.holdout,
                       kl_temperature=a.kl_temperature, kl_kernel=a.kl_kernel, depth_decay=a.depth_decay,
                       eval_every=a.eval_every, seed=a.seed,
                       ckpt_every_s=a.ckpt_every, profile=a.profile)


def _distributed(device: str) -> tuple[int, int, str]:
    """(rank, world, device) under `torchrun --nproc-per-node N` (one process per GPU: rank r takes
    cuda:LOCAL_RANK); (0, 1, device) otherwise."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def cmd_fit(a: argparse.Namespace) -> int:
    from ..loading import pick_mask_token
    from ..target import load_target
    from .data import DistillData, tokenizer_fingerprint
    from .teacher import teacher_model
    from .trainer import Trainer, pick_best, write_report

    cfg = _train_config(a)  # validate before the slow loads
    out = Path(a.out)
    if (out / "checkpoint.pt").is_file() and not a.resume:
        raise JetSpecError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    data = DistillData.concat([DistillData.load(x) for x in a.data], list(a.data))
    rank, world, device = _distributed(a.device)
    target = load_target(a.target, device=device, dtype=a.dtype)
    data.check_tokenizer(tokenizer_fingerprint(target.tokenizer, target.shape.vocab_size), f"training data {', '.join(a.data)}")
    hf = teacher_model(target)
    t0 = time.perf_counter()
    trainer = Trainer(hf, data, cfg, pick_mask_token(target), out, progress=not a.no_progress, rank=rank, world=world)
    say = (lambda m: print(m, file=sys.stderr)) if rank == 0 else (lambda m: None)
    if world > 1:
        say(f"[train] data parallel over {world} processes: {cfg.batch_size} sequences per step in all")
    if a.resume and trainer.load_checkpoint():
        say(f"[train] resumed at step {trainer.step} of {trainer.total_steps}")
    elif a.init_from:
        trainer.init_from(a.init_from)
        say(f"[train] heads start from the weights in {a.init_from}")
    report = trainer.run()
    if world > 1:
        import torch.distributed as dist

        # rank 0 evaluates and saves after the loop: leave together (a gloo rank that tore down
        # first was once aborted with SIGABRT in the data-parallel test)
        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return 0
    trainer.export()
    best = pick_best(report) or cfg.layers[0]
    if (out / "head").exists():
        shutil.rmtree(out / "head")
    shutil.copytree(out / f"L{best}", out / "head")
    report.update(best_layers=best, data=str(a.data), data_sequences=len(data),
                  data_response_tokens=data.response_tokens, data_meta=data.meta, config=vars(a) | {"func": None},
                  wall_seconds=round(time.perf_counter() - t0, 1), device=str(target.device))
    write_report(report, out / "train_report.json")
    summary = {k: {"chain_tau_estimate": round(v["chain_tau_estimate"], 3), "top1_d1": v["top1_per_depth"][0]}
               for k, v in report["heldout"].items()}
    print(json.dumps({"out": str(out), "steps": report["step"], "best_layers": best, "heldout": summary,
                      "seconds_per_step": report["seconds_per_step"],
                      **({"profile_s": report["profile_s"]} if "profile_s" in report else {})}))
    return 0


def register(sub) -> None:
    """Add `train` with its sub-commands to the top-level parser."""
    tp = sub.add_parser("train", help="make training data and train a draft head")
    ts = tp.add_subparsers(dest="train_command", required=True)

    p = ts.add_parser("prompts", help="build the offline training prompt set")
    p.add_argument("--out", default=None, help="write the prompts as JSONL here")
    p.add_argument("--count", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", type=int, default=0, help="print this many prompts")
    p.set_defaults(func=cmd_prompts)

    d = ts.add_parser("data", help="self-distillation: the target answers the prompt set")
    d.add_argument("--out", required=True, help="output file (.safetensors)")
    d.add_argument("--prompts", default=None, help="prompt JSONL from `train prompts` (default: build it now)")
    d.add_argument("--count", type=int, default=8000, help="prompts to build when --prompts is not given")
    d.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    d.add_argument("--kinds", nargs="+", default=None, help="only prompts of these kinds (e.g. code_stub code_task)")
    d.add_argument("--shard", default="0/1",
                   help="I/N: answer the I-th of N contiguous slices (after --kinds and --limit), e.g. one per GPU")
    d.add_argument("--max-new-tokens", type=int, default=320)
    d.add_argument("--max-prompt-tokens", type=int, default=512, help="skip longer prompts")
    d.add_argument("--batch-size", type=int, default=512, help="prompts per generate call")
    d.add_argument("--temperature", type=float, default=0.0, help="0 = greedy answers")
    d.add_argument("--samples", type=int, default=1,
                   help="answers per prompt (needs --temperature > 0; seeds --seed, --seed+1, …)")
    d.add_argument("--time-limit", type=float, default=None, help="stop starting batches after this many seconds")
    d.add_argument("--seed", type=int, default=0)
    _model_args(d)
    d.set_defaults(func=cmd_data)

    f = ts.add_parser("fit", help="train draft heads on distillation data")
    f.add_argument("--data", required=True, nargs="+", help="one or more files from `train data` (joined)")
    f.add_argument("--out", required=True, help="output folder (heads, checkpoint, report)")
    f.add_argument("--layers", type=int, nargs="+", default=list(_T.layers),
                   help="draft layers; several values train one head each, side by side, and keep the best")
    f.add_argument("--steps", type=int, default=_T.steps, help="length of the LR schedule")
    f.add_argument("--time-limit", type=float, default=_T.time_limit_s, help="seconds of training (shortens --steps)")
    f.add_argument("--batch-size", type=int, default=_T.batch_size, help="sequences per step")
    f.add_argument("--anchors", type=int, default=_T.anchors, help="blocks per sequence")
    f.add_argument("--lr", type=float, default=_T.lr)
    f.add_argument("--warmup", type=int, default=_T.warmup)
    f.add_argument("--holdout", type=float, default=_T.holdout, help="fraction of sequences held out")
    f.add_argument("--kl-temperature", type=float, default=_T.kl_temperature)
    f.add_argument("--depth-decay", type=float, default=_T.depth_decay, metavar="GAMMA",
                   help="weigh draft depth d's loss by exp(-(d-1)/GAMMA) (e.g. 7); 0: every depth alike")
    f.add_argument("--kl-kernel", choices=KL_KERNELS, default=_T.kl_kernel,
                   help="how the KL loss is computed: PyTorch ops, or one fused Triton kernel that writes the "
                        "loss and its gradient in two passes over the logits (CUDA); auto: the kernel on CUDA")
    f.add_argument("--eval-every", type=int, default=_T.eval_every, help="steps between held-out checks (0: end only)")
    f.add_argument("--ckpt-every", type=float, default=_T.ckpt_every_s, help="seconds between checkpoints")
    f.add_argument("--seed", type=int, default=_T.seed)
    f.add_argument("--profile", action="store_true",
                   help="time each phase of a step (batch wait, teacher, student, update; synchronises the "
                        "device, so slightly slower) into train_report.json's profile_s")
    f.add_argument("--resume", action="store_true", help="continue from out/checkpoint.pt")
    f.add_argument("--init-from", default=None,
                   help="start from the weights of this head folder (e.g. assets/head) instead of random ones; "
                        "a head with more --layers grows from it (extra layers start as pass-through)")
    _model_args(f)
    f.set_defaults(func=cmd_fit)

    from .calibrate import register as register_calibrate

    register_calibrate(ts)
