"""`python -m jetspec_core bench kernels`: time the Triton verification kernels on a CUDA GPU.

- tree attention (bf16) against its PyTorch reference, against PyTorch SDPA with a dense
  (N, prefix + N) bool mask (K/V expanded to all query heads beforehand, not timed) and against
  `model.sdpa_attend` (the same plus the per-call K/V expansion, what our forward does without
  the kernel), for N in {16, 64, 256}, prefix in {512, 4096}, SmolLM2-135M and Qwen3-8B head
  shapes; `--sweep` also times other tile configurations and split-K counts in every cell;
- the greedy and sampled accept walks against their tensor-op references, and the host syncs
  a round pays for them (the walk itself none, reading its result one);
- KV compaction of a 16-row path in all layers at once against the gather/scatter reference;
- the one-launch tree builder against the tensor-op builders it replaces (topb and accum_logp,
  width 7 and 16, budget 64 and 256, 15 depths; the torch.topk before both is not timed);
- the batch-invariant matmul (its tile from `tile_for`) against `torch.mm` (cuBLAS) at the
  linear layers' shapes of SmolLM2-135M and Qwen3-8B, M in {1, 64, 256}; `--sweep` also times
  every tile of GEMM_TILES and names the one with the least M = 1 plus M = 64 time per shape;
- training's KL loss, forward + backward on bf16 logits of one GPU's step (`KL_SHAPES`): the
  PyTorch ops of `train fit` against the fused kernel of `--kl-kernel triton`, with peak memory.

GPU time per call: CALLS calls captured in one CUDA graph, replayed REPLAYS times (CUDA events),
median / CALLS, in microseconds; this leaves out the host's launch overhead, as the graphed
engine does. `eager` columns: `triton.testing.do_bench` medians of plain calls (host launch
overhead included when it exceeds the GPU time). Also runs as `python -m
jetspec_core.bench.kernels`; `--warmup-only` compiles every variant and exits.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F

from ..errors import JetSpecError

HEAD_SHAPES = {"SmolLM2-135M": (9, 3, 64), "Qwen3-8B": (32, 8, 128)}   # (Hq, Hkv, head_dim)
NODES = (16, 64, 256)
PREFIXES = (512, 4096)
WALK_NODES = (16, 64, 256, 1024)
CACHE_SHAPES = {"SmolLM2-135M": (30, 3, 64), "Qwen3-8B": (36, 8, 128)}  # (layers, Hkv, head_dim)
TREE_BUILDERS, TREE_WIDTHS, TREE_BUDGETS = ("topb", "accum_logp"), (7, 16), (64, 256)
TOPK_VOCABS = {"SmolLM2-135M": 49152, "Qwen3-8B": 151936}   # the draft's (15, V) bf16 logits
TOPK_WIDTHS = (7, 16, 64)
SWEEP = [
    {"block_m": 64, "block_n": 32, "num_warps": 8, "num_stages": 3},
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2},
    {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3},
    {"block_m": 64, "block_n": 64, "num_warps": 8, "num_stages": 2},
    {"block_m": 64, "block_n": 128, "num_warps": 8, "num_stages": 2},
    {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2},
    {"block_m": 64, "block_n": 32, "num_warps": 4, "num_stages": 3},
]
SPLIT_FACTORS = (0.5, 2.0)  # the sweep also scales the default split-K count
# (N, K) of the linears: qkv, o, gate/up, down, lm_head
GEMM_SHAPES = {"SmolLM2-135M": [(960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)],
               "Qwen3-8B": [(6144, 4096), (4096, 4096), (24576, 4096), (4096, 12288), (151936, 4096)]}
GEMM_ROWS = (1, 64, 256)
GEMM_TILES = [(bn, bk, w) for bn in (16, 32, 64, 128) for bk in (32, 64, 128) for w in (2, 4)]


def _random_tree(n: int, gen: torch.Generator) -> list[int]:
    return [-1] + [int(torch.randint(max(0, i - 8), i, (1,), generator=gen)) for i in range(1, n)]


def _ancestors(par: list[int], device) -> torch.Tensor:
    anc = torch.eye(len(par), dtype=torch.bool)
    for i in range(1, len(par)):
        anc[i] |= anc[par[i]]
    return anc.to(device)


CALLS, REPLAYS = 20, 5


class Timer:
    def __init__(self, rep_ms: int, warmup_only: bool):
        self.rep, self.warmup_only = rep_ms, warmup_only

    def __call__(self, fn) -> float | None:
        """GPU microseconds per call of fn from CUDA-graph replay (None with --warmup-only)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # compiles, allocates outside the capture
        torch.cuda.current_stream().wait_stream(side)
        if self.warmup_only:
            return None
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for _ in range(CALLS):
                    fn()
        except RuntimeError as e:  # something in fn syncs: say so rather than stop the bench
            print(f"warning: could not capture {getattr(fn, '__name__', fn)}: {str(e)[:200]}", file=sys.stderr)
            return None
        graph.replay()
        times = []
        for _ in range(REPLAYS):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / CALLS)
        del graph
        return 1000.0 * sorted(times)[len(times) // 2]

    def eager(self, fn) -> float | None:
        """do_bench median of plain calls, microseconds."""
        import triton.testing

        if self.warmup_only:
            return None
        ms = triton.testing.do_bench(fn, warmup=max(5, self.rep // 4), rep=self.rep, quantiles=[0.5])
        return 1000.0 * float(ms[0] if isinstance(ms, (list, tuple)) else ms)


def bench_attention(dev, timer: Timer, sweep: bool, shapes: list[str]) -> list[dict]:
    from ..kernels import tree_attention as ta
    from ..model import sdpa_attend

    rows = []
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        hq, hkv, d = HEAD_SHAPES[shape]
        for n in NODES:
            for p in PREFIXES:
                q = torch.randn(hq, n, d, generator=gen).to(dev, torch.bfloat16)
                k = torch.randn(hkv, p + n, d, generator=gen).to(dev, torch.bfloat16)
                v = torch.randn(hkv, p + n, d, generator=gen).to(dev, torch.bfloat16)
                anc = _ancestors(_random_tree(n, gen), dev)
                bits = ta.pack_ancestor_bits(anc)
                mask = torch.cat([torch.ones(n, p, dtype=torch.bool, device=dev), anc], dim=1)
                kr, vr = k.repeat_interleave(hq // hkv, 0), v.repeat_interleave(hq // hkv, 0)
                cfg = ta.default_config(n, hq // hkv, hkv, d, p, q.dtype, q.device)
                tri = lambda c=None: ta.tree_attention_triton(q, k, v, p, bits, config=c)  # noqa: E731
                dense = lambda: F.scaled_dot_product_attention(  # noqa: E731
                    q[None], kr[None], vr[None], attn_mask=mask[None, None])
                row = {"shape": shape, "N": n, "prefix": p, "config": cfg, "triton_us": timer(tri)}
                trials = []
                if sweep:
                    trials = [dict(c) for c in SWEEP]
                    trials += [{"splits": max(1, round(cfg["splits"] * f))} for f in SPLIT_FACTORS]
                    trials = [c for c in trials if c.get("splits") != cfg["splits"]]
                    row["sweep"] = []
                    for c in trials:
                        t = timer(lambda: tri(c))
                        row["sweep"].append({"config": c, "triton_us": t})
                        if t is not None and t < row.get("best_us", row["triton_us"]):
                            row["best_us"], row["best_config"] = t, c
                if timer.warmup_only:
                    rows.append(row)
                    continue
                row["sdpa_dense_us"] = timer(dense)
                row["sdpa_attend_us"] = timer(lambda: sdpa_attend(q, k, v, mask))
                row["reference_us"] = timer(lambda: ta.tree_attention_reference(q, k, v, p, bits))
                row["triton_eager_us"] = timer.eager(tri)
                row["sdpa_dense_eager_us"] = timer.eager(dense)
                out = tri().float()
                row["max_err_vs_reference"] = float((out - ta.tree_attention_reference(q, k, v, p, bits).float())
                                                    .abs().max())
                row["max_err_vs_sdpa_fp32"] = float((out - F.scaled_dot_product_attention(
                    q.float()[None], kr.float()[None], vr.float()[None], attn_mask=mask[None, None])[0]).abs().max())
                rows.append(row)
    return rows


def bench_walks(dev, timer: Timer) -> list[dict]:
    from ..kernels import accept_walk as aw

    rows = []
    gen = torch.Generator().manual_seed(1)
    for n in WALK_NODES:
        par = torch.tensor(_random_tree(n, gen))
        tokens = torch.randint(0, 4, (n,), generator=gen)
        choice = torch.randint(0, 4, (n,), generator=gen)
        t, pr, c = tokens.to(dev), par.to(dev), choice.to(dev)
        row = {"N": n}
        for rule, tri, ref in (("greedy", aw.greedy_accept_triton, aw.greedy_accept_reference),
                               ("sampled", aw.sampled_accept_triton, aw.sampled_accept_reference)):
            row[f"{rule}_triton_us"] = timer(lambda: tri(t, pr, c, 15))
            if not timer.warmup_only:
                row[f"{rule}_reference_us"] = timer(lambda: ref(t, pr, c, 15))
                row[f"{rule}_triton_eager_us"] = timer.eager(lambda: tri(t, pr, c, 15))
                assert aw.walk_to_host(*tri(t, pr, c, 15)) == aw.walk_to_host(*ref(t, pr, c, 15))
        if not timer.warmup_only:
            row.update(_count_syncs(lambda: aw.greedy_accept_triton(t, pr, c, 15)))
        rows.append(row)
    return rows


def _count_syncs(walk) -> dict:
    """The walk must not sync; reading its three results costs exactly one device→host copy.
    Measured with torch's sync debug mode (it warns on every synchronising call)."""
    import warnings

    from ..kernels.accept_walk import walk_to_host

    torch.cuda.synchronize()
    res = {}
    walk()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = walk()
            res["walk_syncs"] = sum("synchroniz" in str(w.message) for w in caught)
            walk_to_host(*out)
            res["walk_to_host_syncs"] = sum("synchroniz" in str(w.message) for w in caught) - res["walk_syncs"]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    t0 = time.perf_counter()
    for _ in range(200):
        walk_to_host(*walk())
    res["walk_and_read_wall_us"] = (time.perf_counter() - t0) / 200 * 1e6
    return res


def bench_compaction(dev, timer: Timer) -> list[dict]:
    from ..kernels import kv_compact as kc

    rows = []
    gen = torch.Generator().manual_seed(2)
    prefix, tree, path = 4096, 256, 16
    for shape, (layers, hkv, d) in CACHE_SHAPES.items():
        size = (layers, hkv, prefix + tree, d)
        k = torch.randn(size, generator=gen).to(dev, torch.bfloat16)
        v = torch.randn(size, generator=gen).to(dev, torch.bfloat16)
        picks = torch.sort(torch.randperm(tree - 1, generator=gen)[: path - 1] + 1).values
        src = (torch.cat([torch.zeros(1, dtype=torch.long), picks]) + prefix).to(dev)
        row = {"shape": shape, "cache": list(size), "rows": path,
               "triton_us": timer(lambda: kc.kv_compact_triton(k, v, src, prefix))}
        if not timer.warmup_only:
            row["reference_us"] = timer(lambda: kc.kv_compact_reference(k, v, src, prefix))
            row["triton_eager_us"] = timer.eager(lambda: kc.kv_compact_triton(k, v, src, prefix))
        rows.append(row)
    return rows


def bench_trees(dev, timer: Timer) -> list[dict]:
    from ..engine import bucket_for
    from ..engine.gpu_tree import StaticTree, build_from_topk
    from ..kernels import tree_build as tb

    rows = []
    gen = torch.Generator().manual_seed(3)
    depth_logp = torch.log_softmax(torch.randn(15, 32000, generator=gen) * 3, -1).to(dev)   # (D, V)
    root = torch.tensor(11, device=dev)
    for builder in TREE_BUILDERS:
        for width in TREE_WIDTHS:
            lp, tok = torch.topk(depth_logp, width, dim=-1)
            for budget in TREE_BUDGETS:
                args = (builder, lp, tok, root, budget, bucket_for(budget))
                row = {"builder": builder, "width": width, "budget": budget,
                       "triton_us": timer(lambda: tb.build_tree_triton(*args))}
                if not timer.warmup_only:
                    row["torch_us"] = timer(lambda: build_from_topk(*args))
                    row["triton_eager_us"] = timer.eager(lambda: tb.build_tree_triton(*args))
                    got, ref = tb.build_tree_triton(*args), build_from_topk(*args)
                    row["same_tree"] = all(torch.equal(getattr(got, f), getattr(ref, f)) for f in StaticTree.FIELDS)
                rows.append(row)
    return rows


def bench_topk(dev, timer: Timer, shapes: list[str]) -> list[dict]:
    """The draft's per-depth top-K log-probs: log_softmax + torch.topk against the three-launch
    kernel; `same` = the kernel picked logits equal to torch's (token ids may differ on ties)."""
    from ..kernels import depth_topk as dt

    rows = []
    gen = torch.Generator(device=dev).manual_seed(6)
    for shape in shapes:
        v = TOPK_VOCABS[shape]
        x = (torch.randn(15, v, device=dev, generator=gen) * 4).to(torch.bfloat16)
        for k in TOPK_WIDTHS:
            row = {"shape": shape, "vocab": v, "K": k, "plan": dt.plan(v, k),
                   "triton_us": timer(lambda: dt.depth_topk_triton(x, k))}
            if not timer.warmup_only:
                row["torch_us"] = timer(lambda: dt.depth_topk_reference(x, k))
                lp, tok = dt.depth_topk_triton(x, k)
                lp_r, tok_r = dt.depth_topk_reference(x, k)
                row["same"] = bool(torch.equal(x.gather(1, tok), x.gather(1, tok_r)))
                row["max_err"] = float((lp - lp_r).abs().max())
            rows.append(row)
    return rows


def bench_gemm(dev, timer: Timer, sweep: bool, shapes: list[str]) -> list[dict]:
    from ..kernels import bi_matmul as bm

    rows = []
    gen = torch.Generator(device=dev).manual_seed(4)
    for shape in shapes:
        for n, k in GEMM_SHAPES[shape]:
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=gen)
            row = {"shape": shape, "N": n, "K": k, "tile": list(bm.tile_for(n, k))}
            for m in GEMM_ROWS:
                x = torch.randn(m, k, device=dev, dtype=torch.bfloat16, generator=gen)
                row[f"triton_m{m}_us"] = timer(lambda: bm.bi_matmul(x, w))
                row[f"torch_m{m}_us"] = timer(lambda: torch.mm(x, w.t()))
                if m > bm.BLOCK_M:  # row tiles per program (the launcher picks by M)
                    for sub in bm.SUBS:
                        row.setdefault("subs", {}).setdefault(f"m{m}", {})[sub] = \
                            timer(lambda sub=sub: bm.bi_matmul(x, w, sub=sub))
                if sweep:
                    row.setdefault("sweep", {})
                    for t in GEMM_TILES:
                        row["sweep"].setdefault(",".join(map(str, t)), {})[f"m{m}"] = \
                            timer(lambda t=t: bm.bi_matmul(x, w, tile=t))
            if sweep and not timer.warmup_only:
                best = min(row["sweep"], key=lambda t: row["sweep"][t]["m1"] + row["sweep"][t]["m64"])
                row["best_tile"], row["best_us"] = best, row["sweep"][best]
            rows.append(row)
            del w
    return rows


KL_SHAPES = {"SmolLM2-135M": (15000, 49152), "Qwen3-8B": (4000, 151936)}   # (rows, vocab) per GPU and step


def bench_kl(dev, timer: Timer, shapes: list[str]) -> list[dict]:
    """Training's KL loss, forward + backward, bf16 logits: the PyTorch ops of `train fit` against
    the fused kernel (`--kl-kernel triton`). Rows: one GPU's labelled draft slots per step (32
    sequences × 32 anchors × 15 depths for SmolLM2). Milliseconds, do_bench medians."""
    from ..kernels import fused_kl
    from ..train.trainer import kl_torch

    rows = []
    gen = torch.Generator(device=dev).manual_seed(5)
    for shape in shapes:
        r, v = KL_SHAPES[shape]
        s = (torch.randn(r, v, device=dev, generator=gen) * 3).to(torch.bfloat16).requires_grad_(True)
        t = (torch.randn(r, v, device=dev, generator=gen) * 3).to(torch.bfloat16)
        runs = {"torch": lambda: kl_torch(s, t, 1.0) / r, "triton": lambda: fused_kl.kl_rows(s, t).sum() / r}
        row = {"shape": shape, "rows": r, "vocab": v}
        for name, fn in runs.items():
            def step(fn=fn):
                s.grad = None
                fn().backward()
            us = timer.eager(step)
            row[f"{name}_ms"] = None if us is None else us / 1000.0
            torch.cuda.reset_peak_memory_stats(dev)
            step()
            row[f"{name}_peak_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
        with torch.no_grad():
            ref = fused_kl.kl_rows_reference(s.detach(), t)
            err = (fused_kl.kl_rows(s.detach(), t) - ref).abs() / ref.abs().clamp(min=1e-6)
            row["max_rel_err"] = float(err.max())
        rows.append(row)
        del s, t
    return rows


def _fmt(x, digits=1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def report(res: dict) -> str:
    lines = [f"# Kernel micro-benchmark ({res['device']}, torch {res['torch']}, triton {res['triton']})", "",
             f"GPU µs per call from CUDA-graph replay ({CALLS} calls per graph, median of {REPLAYS} replays); "
             "eager = do_bench median of plain calls (includes host launch overhead).", "",
             "Tree attention, bf16:", "",
             "| head shape | N | prefix | Triton | SDPA dense mask | sdpa_attend | reference | SDPA / Triton "
             "| Triton eager | SDPA eager | best swept config | max err |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in res["attention"]:
        best = f"{_fmt(r['best_us'])} {r['best_config']}" if "best_us" in r else "-"
        ratio = _fmt(r["sdpa_dense_us"] / r["triton_us"], 2) if r.get("sdpa_dense_us") else "-"
        lines.append(f"| {r['shape']} | {r['N']} | {r['prefix']} | {_fmt(r['triton_us'])} | "
                     f"{_fmt(r.get('sdpa_dense_us'))} | {_fmt(r.get('sdpa_attend_us'))} | "
                     f"{_fmt(r.get('reference_us'))} | {ratio} | {_fmt(r.get('triton_eager_us'))} | "
                     f"{_fmt(r.get('sdpa_dense_eager_us'))} | {best} | {_fmt(r.get('max_err_vs_reference'), 4)} |")
    lines += ["", "Accept walks (max_depth 15):", "",
              "| N | greedy Triton | greedy reference | greedy Triton eager | sampled Triton | sampled reference "
              "| syncs: walk / read | walk + read, wall µs |",
              "|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in res["walks"]:
        lines.append(f"| {r['N']} | {_fmt(r['greedy_triton_us'])} | {_fmt(r.get('greedy_reference_us'))} | "
                     f"{_fmt(r.get('greedy_triton_eager_us'))} | {_fmt(r['sampled_triton_us'])} | "
                     f"{_fmt(r.get('sampled_reference_us'))} | "
                     f"{r.get('walk_syncs', '-')} / {r.get('walk_to_host_syncs', '-')} | {_fmt(r.get('walk_and_read_wall_us'))} |")
    lines += ["", "KV compaction of a 16-row path, all layers, bf16:", "",
              "| cache (L, Hkv, S, D) | Triton (1 launch) | reference (gather + scatter) | Triton eager |",
              "|---|---:|---:|---:|"]
    for r in res["compaction"]:
        lines.append(f"| {r['shape']} {tuple(r['cache'])} | {_fmt(r['triton_us'])} | {_fmt(r.get('reference_us'))} | "
                     f"{_fmt(r.get('triton_eager_us'))} |")
    lines += ["", "Tree build (15 depths; tensor ops vs one Triton launch):", "",
              "| builder | width | budget | Triton | torch ops | torch / Triton | Triton eager | same tree |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["trees"]:
        ratio = _fmt(r["torch_us"] / r["triton_us"], 2) if r.get("torch_us") and r["triton_us"] else "-"
        lines.append(f"| {r['builder']} | {r['width']} | {r['budget']} | {_fmt(r['triton_us'])} | "
                     f"{_fmt(r.get('torch_us'))} | {ratio} | {_fmt(r.get('triton_eager_us'))} | "
                     f"{r.get('same_tree', '-')} |")
    lines += ["", "Draft top-K (15 depths, bf16 logits; log_softmax + torch.topk vs three Triton launches):", "",
              "| model | vocab | K | chunk × chunks | Triton | torch ops | torch / Triton | same picks | max err |",
              "|---|---:|---:|---|---:|---:|---:|---|---:|"]
    for r in res.get("topk", []):
        ratio = _fmt(r["torch_us"] / r["triton_us"], 2) if r.get("torch_us") and r["triton_us"] else "-"
        lines.append(f"| {r['shape']} | {r['vocab']} | {r['K']} | {r['plan']['C']} × {r['plan']['NC']} | "
                     f"{_fmt(r['triton_us'])} | {_fmt(r.get('torch_us'))} | {ratio} | {r.get('same', '-')} | "
                     f"{_fmt(r.get('max_err'), 7)} |")
    lines += ["", "Batch-invariant matmul vs torch.mm (cuBLAS), bf16, µs at M = 1 / 64 / 256:", "",
              "| model | N × K | tile (BN, BK, warps) | Triton | torch.mm | best swept tile: M = 1 / 64 / 256 |",
              "|---|---|---|---|---|---|"]
    for r in res["gemm"]:
        tri = " / ".join(_fmt(r.get(f"triton_m{m}_us")) for m in GEMM_ROWS)
        ref = " / ".join(_fmt(r.get(f"torch_m{m}_us")) for m in GEMM_ROWS)
        best = (f"{r['best_tile']}: " + " / ".join(_fmt(r["best_us"].get(f"m{m}")) for m in GEMM_ROWS)
                if "best_tile" in r else "-")
        lines.append(f"| {r['shape']} | {r['N']} × {r['K']} | {tuple(r['tile'])} | {tri} | {ref} | {best} |")
    subs = [r for r in res["gemm"] if "subs" in r]
    if subs:
        cols = list(next(iter(subs[0]["subs"].values())))  # the sub values timed
        lines += ["", "Row tiles per program (`sub`), default tile, µs:", "",
                  "| model | N × K | rows | " + " | ".join(f"sub {c}" for c in cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for r in subs:
            for m, d in r["subs"].items():
                lines.append(f"| {r['shape']} | {r['N']} × {r['K']} | {m[1:]} | "
                             + " | ".join(_fmt(v) for v in d.values()) + " |")
    lines += ["", "Training KL, forward + backward, bf16 logits, ms (peak GB):", "",
              "| model | rows × vocab | PyTorch ops | fused kernel | PyTorch / fused | max rel. err |",
              "|---|---|---|---|---:|---:|"]
    for r in res.get("kl", []):
        ratio = _fmt(r["torch_ms"] / r["triton_ms"], 2) if r.get("torch_ms") and r.get("triton_ms") else "-"
        lines.append(f"| {r['shape']} | {r['rows']} × {r['vocab']} | {_fmt(r.get('torch_ms'), 2)} "
                     f"({_fmt(r['torch_peak_gb'])}) | {_fmt(r.get('triton_ms'), 2)} ({_fmt(r['triton_peak_gb'])}) | "
                     f"{ratio} | {r['max_rel_err']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jetspec_core bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--rep", type=int, default=20, help="milliseconds of timed repetitions per eager measurement")
    ap.add_argument("--sweep", action="store_true", help="also try other tile configs and split counts in every cell")
    ap.add_argument("--warmup-only", action="store_true", help="compile every variant once, time nothing")
    ap.add_argument("--only", choices=["attention", "walks", "compaction", "trees", "topk", "gemm", "kl"], default=None)
    ap.add_argument("--shape", choices=list(HEAD_SHAPES), action="append", default=None,
                    help="model shape(s) for the attention, gemm and kl sections (default: all)")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise JetSpecError("bench kernels needs a CUDA GPU (the kernels' CPU path is the PyTorch reference)")
    import triton

    dev = torch.device("cuda")
    timer = Timer(a.rep, a.warmup_only)
    res = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "rep_ms": a.rep, "attention": [], "walks": [], "compaction": [],
           "trees": [], "topk": [], "gemm": [], "kl": []}
    sections = {"attention": lambda: bench_attention(dev, timer, a.sweep, a.shape or list(HEAD_SHAPES)),
                "walks": lambda: bench_walks(dev, timer), "compaction": lambda: bench_compaction(dev, timer),
                "trees": lambda: bench_trees(dev, timer),
                "topk": lambda: bench_topk(dev, timer, a.shape or list(TOPK_VOCABS)),
                "gemm": lambda: bench_gemm(dev, timer, a.sweep, a.shape or list(HEAD_SHAPES)),
                "kl": lambda: bench_kl(dev, timer, a.shape or list(KL_SHAPES))}
    for name, run in sections.items():
        if a.only in (None, name):
            res[name] = run()
            if a.json and not a.warmup_only:  # written after each section: a cut-short run keeps its part
                with open(a.json, "w") as f:
                    json.dump(res, f, indent=1)
    if a.warmup_only:
        print("compiled all kernel variants")
        return 0
    print(report(res))
    return 0


if __name__ == "__main__":
    from . import run_as_script

    run_as_script(main)
