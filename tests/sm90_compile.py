"""Compile kernels for an H100/H200 (sm_90) on a machine without a GPU: Triton's front end and
code generation run without a device, so a kernel that the interpreter runs but the compiler
rejects (a loop-carried variable that changes type, a block shape it cannot lower, ...) is caught
on CPU, before a GPU session finds it. Run as a script (its own process: the kernel tests switch
the Triton interpreter on, which cannot be undone in one process); prints one JSON line per
variant: {"kernel", "variant", "ok", "error", "seconds"}. Used by tests/test_kernels_compile.py."""
from __future__ import annotations

import json
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from jetspec_core.engine import fused  # noqa: E402
from jetspec_core.kernels import greedy_record, kv_compact, tree_attention, tree_build  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def signature(fn, pointers: dict[str, str], meta: dict, ints: str = "i32"):
    """(signature, constexprs, options) for triton.compile from a launcher's meta: pointer params by
    type, constexpr params by value, every other param a scalar of type `ints`; options: the meta's
    num_warps / enable_fp_fusion."""
    sig, consts = {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name], consts[(i,)] = "constexpr", meta[p.name]
        else:
            sig[p.name] = pointers.get(p.name, ints)
    return sig, consts, {k: meta[k] for k in ("num_warps", "enable_fp_fusion") if k in meta}


def variants():
    """(kernel, variant, fn, (signature, constexprs, options)) with the launchers' own launch meta."""
    gr = greedy_record._greedy_record_kernel
    gr_ptr = dict(TOK="*i64", PAR="*i64", DEP="*i64", RANK="*i64", VALID="*u8", NVALID="*i64", ANC="*u8",
                  DLP="*fp32", CLP="*fp32", TOP="*i64", LOGITS="*fp32", stride_l="i64", LSE="*fp32",
                  INTS="*i64", FLOATS="*fp32")
    for n in (1, 64, 256):
        yield "greedy_record", f"N{n}", gr, signature(gr, gr_ptr, greedy_record.launch_meta(n, 16))
    kc = kv_compact._kv_compact_kernel
    for m, rel, ints in ((16, True, "*i64"), (16, False, "*i32")):
        yield "kv_compact", f"M{m}-{'relative' if rel else 'absolute'}-{ints[1:]}", kc, \
            signature(kc, dict(K="*bf16", V="*bf16", Src="*i64", Dst=ints, Num=ints),
                      kv_compact.launch_meta(m, 64, rel))
    pk = tree_attention._pack_bits_kernel
    for n in (1, 64, 256):
        yield "pack_bits", f"N{n}", pk, signature(pk, dict(ANC="*u8", OUT="*i32"), tree_attention.pack_launch_meta(n))
    tk = tree_build._tree_kernel
    tk_ptr = dict(LP="*fp32", TOK="*i64", ROOT="*i64", I64="*i64", F32="*fp32", U8="*u8", CUM="*fp32",
                  IDX="*i32", KEY="*i64", RBUF="*fp32")
    for builder, k, budget in (("topb", 16, 64), ("topb", 16, 256), ("accum_logp", 7, 64), ("top2gap", 7, 64)):
        p = tree_build._plan(builder, 15, k, budget, budget)
        meta = dict(p, FLOOR_=tree_build.FLOOR, GAP=tree_build.TOP2GAP_NATS, num_warps=tree_build.warps(p))
        yield "tree_build", f"{builder}-K{k}-b{budget}", tk, signature(tk, tk_ptr, meta)
    rk = fused._rope_kv_kernel
    rk_ptr = dict(QKV="*bf16", POS="*i64", START="*i64", COS="*bf16", SIN="*bf16", NW="*bf16", K="*bf16",
                  V="*bf16", eps="fp32")
    for d, norm, rows in ((64, True, False), (64, False, False), (128, True, False), (64, True, True)):
        meta = fused.rope_launch_meta(d, norm, rows)
        yield "rope_kv", f"D{d}-{'norm' if norm else 'plain'}{'-pos-rows' if rows else ''}", rk, \
            signature(rk, rk_ptr, meta)


def main(only: list[str]) -> None:
    for name, variant, fn, (sig, consts, opts) in variants():
        if only and name not in only:
            continue
        t0 = time.time()
        try:
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=TARGET,
                           options=dict({"num_warps": 4}, **opts))
            ok, err = True, None
        except Exception as e:  # noqa: BLE001 - reported per variant
            ok, err = False, f"{type(e).__name__}: {str(e)[-1500:]}"
        print(json.dumps({"kernel": name, "variant": variant, "ok": ok, "error": err,
                          "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
