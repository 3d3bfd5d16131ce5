"""`python -m jetspec_core bench speed`: how fast plain decoding and JetSpec really are.

One run measures, on the same machine and the same prompts:
- plain greedy decoding through the engine (`FastDecoder`, graphed on a GPU) and through
  Hugging Face `generate` (what users would otherwise run);
- JetSpec at each budget: tok/s, speedup over the engine's own plain decoding, τ, the round's
  time split (draft, tree, verify, accept, from CUDA events), and round time ÷ plain step time;
- whether JetSpec's tokens equal plain decoding's (per prompt; where not, the first divergence
  and the target's top-2 logit margin there);
- cost-only runs of a Qwen3-8B-shaped target (and others, `--cost-shapes`) with random bf16
  weights (no download): plain step ms, round ms at one budget, their ratio and the
  memory-bandwidth bound of the plain step (weights read per step ÷ measured copy bandwidth).

Answers end at the target's EOS (at most --max-new-tokens), as in the app: in the exact (default)
mode JetSpec and plain decoding produce the same tokens, so both runs time the same text (with
`--no-batch-invariant` bf16 near-ties can make them differ). `--no-stop-at-eos` decodes
max-new-tokens every time, text past the end of the answer included (the tables up to session 17
did; the head drafts that text worse, since it was trained on answers cut at EOS). HF
`generate` always decodes max-new-tokens: only its per-token rate is reported.

Everything comes from timers of this run; nothing is hard-coded. It also runs (slowly) on CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from types import SimpleNamespace

import torch

from ..cli import add_calibration_arg
from ..config import DecodeConfig
from ..drafter import HeadDrafter
from ..errors import JetSpecError

PHASES = ("draft", "tree", "verify", "accept")


def build_parser() -> argparse.ArgumentParser:
    d = DecodeConfig()
    p = argparse.ArgumentParser(prog="python -m jetspec_core bench speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16")
    p.add_argument("--target", default=None, help="HF model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--head", default=None, help="draft head folder (default: the shipped assets/head; "
                   "'random' when there is none)")
    p.add_argument("--dataset", default="humaneval,mtbench", help="humaneval, mtbench, or both (comma list)")
    p.add_argument("--data-dir", default=None, help="folder holding HumanEval.jsonl.gz / question.jsonl")
    p.add_argument("--limit", type=int, default=10, help="prompts per dataset (spread over the file)")
    p.add_argument("--budgets", default="16,64,128,256", help="comma list of tree budgets")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--builder", default=d.builder)
    p.add_argument("--width", type=int, default=d.width)
    add_calibration_arg(p)
    p.add_argument("--stop-at-eos", action=argparse.BooleanOptionalAction, default=True,
                   help="end each answer at the target's EOS, as the app and plain decoding do (default); "
                   "--no-stop-at-eos always decodes max-new-tokens, text past the end of the answer included")
    p.add_argument("--hf-limit", type=int, default=2, help="prompts for the HF generate baseline (0: skip)")
    p.add_argument("--no-engine-model", action="store_true", help="skip the embedded/target runs (8B only)")
    p.add_argument("--cost-shapes", default="auto",
                   help="cost-only runs with random weights: comma list of " + ", ".join(SHAPES)
                   + " ('auto': qwen3-8b on CUDA, none on CPU; 'none')")
    p.add_argument("--cost-budget", type=int, default=256, help="budget of the cost-only runs")
    p.add_argument("--cost-prefix", type=int, default=512, help="prompt tokens of the cost-only runs")
    p.add_argument("--attention", default="auto", help="auto (Triton tree attention if it works) or sdpa")
    p.add_argument("--batch-invariant", action=argparse.BooleanOptionalAction, default=None,
                   help="batch-invariant target forward: bf16 JetSpec equals bf16 plain decoding, each step "
                   "costs more (CUDA; default: $JETSPEC_BATCH_INVARIANT, else auto = on where it applies)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    return p


# -- measuring one configuration over a prompt set ---------------------------------------------
def run_config(dec, prompts: list[list[int]], cfg: DecodeConfig) -> dict:
    """Decode every prompt; return totals, means and the token ids per prompt."""
    tokens, decode_s, rounds, taus, at_eos = 0, 0.0, 0, [], 0
    split = dict.fromkeys(PHASES, 0.0)
    outs = []
    for ids in prompts:
        summary, recs = dec.generate(ids, cfg)
        outs.append(summary.token_ids)
        at_eos += summary.finished == "eos"
        tokens += len(summary.token_ids)
        decode_s += summary.elapsed_s - summary.prefill_s
        rounds += len(recs)
        taus += [r.accept_len for r in recs]
        for k in PHASES:
            split[k] += sum(r.timings[k] for r in recs)
    return {"tokens": tokens, "ended_at_eos": at_eos, "decode_s": decode_s, "rounds": rounds,
            "tok_s": tokens / max(decode_s, 1e-9), "tau": sum(taus) / max(len(taus), 1),
            "round_ms": 1e3 * decode_s / max(rounds, 1),
            "split_ms": {k: 1e3 * v / max(rounds, 1) for k, v in split.items()},
            "outputs": outs}


def agreement(dec, prompts, plain_outs, spec_outs) -> dict:
    """Token-for-token equality per prompt; first divergence and top-2 margin where they differ."""
    diffs = []
    for i, (ids, a, b) in enumerate(zip(prompts, plain_outs, spec_outs)):
        if a == b:
            continue
        j = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        top2 = torch.topk(dec.next_logits(ids + a[:j]).float(), 2).values.tolist()
        diffs.append({"prompt": i, "first_divergence": j, "plain": a[j] if j < len(a) else None,
                      "jetspec": b[j] if j < len(b) else None, "top2_margin": top2[0] - top2[1]})
    return {"equal": len(prompts) - len(diffs), "prompts": len(prompts), "diffs": diffs}


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_generate_tok_s(target, prompts: list[list[int]], max_new: int) -> dict | None:
    """Plain greedy decoding with Hugging Face `generate` over the same weights."""
    from transformers import AutoModelForCausalLM

    cfg = target.hf_config
    if cfg is None or not prompts:
        return None
    hf = AutoModelForCausalLM.from_config(cfg)
    hf.load_state_dict(hf_state_dict(target.model), strict=False)
    if getattr(cfg, "tie_word_embeddings", False):
        hf.tie_weights()
    hf = hf.to(device=target.device, dtype=target.model.dtype).eval()
    dev = target.device
    tokens, secs = 0, 0.0
    for ids in prompts:
        x = torch.tensor([ids], device=dev)
        kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=max_new, min_new_tokens=max_new,
                  do_sample=False, pad_token_id=0)
        with torch.no_grad():
            hf.generate(x, **dict(kw, max_new_tokens=2, min_new_tokens=2))  # warm-up
            _sync(dev)
            t0 = time.perf_counter()
            out = hf.generate(x, **kw)
            _sync(dev)
        secs += time.perf_counter() - t0
        tokens += out.shape[1] - len(ids)
    del hf
    return {"tokens": tokens, "seconds": secs, "tok_s": tokens / max(secs, 1e-9), "prompts": len(prompts)}


def hf_state_dict(model) -> dict:
    """Our TargetModel's parameters under the Hugging Face names."""
    state = {"model.embed_tokens.weight": model.embed, "model.norm.weight": model.norm}
    for i, layer in enumerate(model.layers):
        for name, p in layer.items():
            dotted = name.replace("_weight", ".weight").replace("_bias", ".bias")
            dotted = dotted.replace("self_attn_", "self_attn.").replace("mlp_", "mlp.")
            state[f"model.layers.{i}.{dotted}"] = p.data
    if model.lm_head is not model.embed:
        state["lm_head.weight"] = model.lm_head
    return state


# -- the embedded model (or --target) on the prompt sets ---------------------------------------
def bench_target(a, budgets: list[int]) -> dict:
    from ..bench.datasets import load_dataset, spread
    from ..engine import FastDecoder
    from ..loading import load_head
    from ..target import load_target

    t0 = time.perf_counter()
    target = load_target(a.target, device=a.device, dtype=a.dtype)
    head, head_desc = load_head(a.head, target)
    if head is None:
        head, head_desc = load_head("random", target)
    dec = FastDecoder(target, HeadDrafter(head, target.model), attention=a.attention,
                      batch_invariant=a.batch_invariant)
    load_s = time.perf_counter() - t0
    res = {"target": target.name, "head": head_desc, "device": str(target.device),
           "dtype": str(target.model.dtype).replace("torch.", ""), "engine": dec.describe(),
           "load_s": load_s, "datasets": {}}
    for name in [x.strip() for x in a.dataset.split(",") if x.strip()]:
        prompts = [target.encode_prompt(p.text) for p in spread(load_dataset(name, a.data_dir), a.limit)]
        longest = max(len(p) for p in prompts)
        dec.reserve(longest + a.max_new_tokens + 2 * (max(budgets) + dec.d1) + 8)
        base = dict(max_new_tokens=a.max_new_tokens, stop_at_eos=a.stop_at_eos, builder=a.builder,
                    calibrate=not a.no_calibration,
                    width=a.width)
        plain_cfg = DecodeConfig(mode="plain", **base)
        t1 = time.perf_counter()
        for b in [1] + budgets:  # capture every graph before timing anything
            cfg = plain_cfg if b == 1 else DecodeConfig(budget=b, **base)
            dec.generate(prompts[0], DecodeConfig(**dict(cfg.to_dict(), max_new_tokens=8)))
        capture_s = time.perf_counter() - t1
        plain = run_config(dec, prompts, plain_cfg)
        out = {"prompts": len(prompts), "prompt_tokens_max": longest, "capture_s": capture_s, "budgets": {}}
        for b in budgets:
            r = run_config(dec, prompts, DecodeConfig(budget=b, **base))
            r["agreement"] = agreement(dec, prompts, plain["outputs"], r.pop("outputs"))
            out["budgets"][str(b)] = r
        # plain decoding again after the budgets: a host or clock hiccup during one run shows as
        # two different figures; the faster run is the baseline (the conservative speedup)
        again = run_config(dec, prompts, plain_cfg)
        runs = [{k: v for k, v in x.items() if k != "outputs"} for x in (plain, again)]
        out["plain"] = dict(max(runs, key=lambda x: x["tok_s"]), runs_tok_s=[x["tok_s"] for x in runs])
        for r in out["budgets"].values():
            r["speedup"] = r["tok_s"] / out["plain"]["tok_s"]
            r["round_over_plain_step"] = r["round_ms"] / out["plain"]["round_ms"]
        if a.hf_limit > 0:
            out["hf_generate"] = hf_generate_tok_s(target, prompts[: a.hf_limit], a.max_new_tokens)
            if out["hf_generate"]:
                out["engine_plain_over_hf"] = out["plain"]["tok_s"] / out["hf_generate"]["tok_s"]
        res["datasets"][name] = out
    return res


# -- cost-only runs with random weights --------------------------------------------------------
QWEN3_8B = dict(arch="qwen3", num_layers=36, hidden_size=4096, intermediate_size=12288, num_heads=32,
                num_kv_heads=8, head_dim=128, vocab_size=151936, rms_norm_eps=1e-6, rope_theta=1e6,
                max_position=40960)
SMOLLM2_135M = dict(arch="llama", num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9,
                    num_kv_heads=3, head_dim=64, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=1e5,
                    max_position=8192)
# shape, head layers, mask token
SHAPES = {"qwen3-8b": (QWEN3_8B, 5, 151669), "smollm2-135m": (SMOLLM2_135M, 2, 16)}


def random_target(shape_kw: dict, device, dtype, seed: int = 0):
    """A target of the given shape with random weights (std 0.02), built on the device."""
    from ..model import ARCHITECTURES, ModelShape, TargetModel
    from ..target import Target

    s = ModelShape(**shape_kw)
    bias, qk_norm = ARCHITECTURES[s.arch]
    g = torch.Generator(device=device).manual_seed(seed)
    rnd = lambda *shape: (torch.randn(*shape, device=device, generator=g) * 0.02).to(dtype)  # noqa: E731
    one = lambda n: torch.ones(n, device=device, dtype=dtype)  # noqa: E731
    hq, hkv, d, h, i = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.head_dim, s.hidden_size, s.intermediate_size
    st = {"model.embed_tokens.weight": rnd(s.vocab_size, h), "model.norm.weight": one(h),
          "lm_head.weight": rnd(s.vocab_size, h)}
    for li in range(s.num_layers):
        p = f"model.layers.{li}."
        st.update({p + "input_layernorm.weight": one(h), p + "post_attention_layernorm.weight": one(h),
                   p + "self_attn.q_proj.weight": rnd(hq, h), p + "self_attn.k_proj.weight": rnd(hkv, h),
                   p + "self_attn.v_proj.weight": rnd(hkv, h), p + "self_attn.o_proj.weight": rnd(h, hq),
                   p + "mlp.gate_proj.weight": rnd(i, h), p + "mlp.up_proj.weight": rnd(i, h),
                   p + "mlp.down_proj.weight": rnd(h, i)})
        if qk_norm:
            st.update({p + "self_attn.q_norm.weight": one(d), p + "self_attn.k_norm.weight": one(d)})
        if bias:
            st.update({p + "self_attn.q_proj.bias": rnd(hq), p + "self_attn.k_proj.bias": rnd(hkv),
                       p + "self_attn.v_proj.bias": rnd(hkv)})
    model = TargetModel(s, st, tied=False).eval()
    return Target(name=f"random {s.arch} ({s.num_layers}L, hidden {h})", model=model, tokenizer=None,
                  hf_config=SimpleNamespace(eos_token_id=None))


def copy_bandwidth(device, gib: float = 2.0) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(10):
        dst.copy_(src)
    e1.record()
    _sync(device)
    secs = e0.elapsed_time(e1) / 1e3 / 10
    del src, dst
    return 2 * n / secs


def bench_cost(a, name: str) -> dict:
    """Cost-only: a target of a known shape with random bf16 weights and a random 5-tap head."""
    from ..engine import FastDecoder
    from ..head import DraftHead, HeadConfig

    shape, head_layers, mask_id = SHAPES[name]
    dev = torch.device("cuda" if a.device in (None, "auto") else a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    target = random_target(shape, dev, dtype)
    hc = HeadConfig.for_target(target.shape, mask_token_id=mask_id, num_layers=head_layers, num_taps=5)
    with torch.device("meta"):
        head = DraftHead(hc)
    head = head.to_empty(device=dev)
    g = torch.Generator(device=dev).manual_seed(1)
    with torch.no_grad():  # random matrices (std 0.02), unit norms; own generator, on the device
        for p in head.parameters():
            p.normal_(0.0, 0.02, generator=g) if p.dim() == 2 else p.fill_(1.0)
    head = head.to(dtype=dtype).eval()
    dec = FastDecoder(target, HeadDrafter(head, target.model), attention=a.attention,
                      batch_invariant=a.batch_invariant)
    build_s = time.perf_counter() - t0
    m = target.model
    read = sum(p.numel() * p.element_size() for p in m.parameters() if p is not m.embed)
    if m.lm_head is m.embed:
        read += m.embed.numel() * m.embed.element_size()
    ids = torch.randint(0, shape["vocab_size"], (a.cost_prefix,), generator=torch.Generator().manual_seed(0)).tolist()
    dec.reserve(len(ids) + 96 + 2 * (a.cost_budget + dec.d1) + 8)
    plain_cfg = DecodeConfig(mode="plain", max_new_tokens=64, stop_at_eos=False)
    spec_cfg = DecodeConfig(budget=a.cost_budget, max_new_tokens=32, stop_at_eos=False, builder=a.builder,
                            width=a.width)
    for cfg in (plain_cfg, spec_cfg):
        dec.generate(ids, DecodeConfig(**dict(cfg.to_dict(), max_new_tokens=4)))
    plain = run_config(dec, [ids], plain_cfg)
    spec = run_config(dec, [ids], spec_cfg)
    bw = copy_bandwidth(dev) if dev.type == "cuda" else None
    res = {"shape": f"{name} (random {str(dtype).replace('torch.', '')} weights)",
           "head": f"random, {head_layers} layers, 5 taps", "engine": dec.describe(), "build_s": build_s,
           "prefix": len(ids), "budget": a.cost_budget, "weight_bytes_read_per_step": read,
           "copy_bandwidth_Bps": bw, "bandwidth_bound_ms": 1e3 * read / bw if bw else None,
           "plain_step_ms": plain["round_ms"], "plain_split_ms": plain["split_ms"],
           "round_ms": spec["round_ms"], "round_split_ms": spec["split_ms"],
           "round_over_plain_step": spec["round_ms"] / plain["round_ms"]}
    del dec, target, head
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return res


# -- output ------------------------------------------------------------------------------------
def print_tables(res: dict) -> None:
    t = res.get("target_run")
    if t:
        print(f"target {t['target']} | head {t['head']} | {t['device']} {t['dtype']} | engine {t['engine']}")
        for name, d in t["datasets"].items():
            p = d["plain"]
            hf = d.get("hf_generate")
            eos = (f"at most {res['max_new_tokens']} new tokens, stopping at EOS ({p['ended_at_eos']} of "
                   f"{d['prompts']} answers ended there)" if res.get("stop_at_eos")
                   else f"always {res['max_new_tokens']} new tokens, past EOS included")
            print(f"\n== {name}: {d['prompts']} prompts, {eos}; plain decoded {p['tokens']} tokens ==")
            runs = " / ".join(f"{x:.0f}" for x in p.get("runs_tok_s", []))
            print(f"plain (engine): {p['tok_s']:.1f} tok/s, step {p['round_ms']:.3f} ms"
                  + (f" (faster of two runs: {runs} tok/s)" if runs else "")
                  + (f" | HF generate: {hf['tok_s']:.1f} tok/s ({hf['prompts']} prompts) | engine/HF "
                     f"{d['engine_plain_over_hf']:.1f}x" if hf else ""))
            print(f"{'budget':>6} {'tok/s':>8} {'speedup':>7} {'tau':>5} {'round ms':>8} {'/plain':>6} "
                  f"{'draft':>6} {'tree':>6} {'verify':>6} {'accept':>6} {'equal':>6}")
            for b, r in d["budgets"].items():
                s = r["split_ms"]
                ag = r["agreement"]
                print(f"{b:>6} {r['tok_s']:8.1f} {r['speedup']:7.2f} {r['tau']:5.2f} {r['round_ms']:8.3f} "
                      f"{r['round_over_plain_step']:6.2f} {s['draft']:6.3f} {s['tree']:6.3f} {s['verify']:6.3f} "
                      f"{s['accept']:6.3f} {ag['equal']:>3}/{ag['prompts']}")
                for df in ag["diffs"]:
                    print(f"        prompt {df['prompt']}: first divergence at token {df['first_divergence']}, "
                          f"top-2 logit margin {df['top2_margin']:.4f}")
    for b in res.get("cost_only", {}).values():
        bound = (f" (bandwidth bound {b['bandwidth_bound_ms']:.3f} ms: {b['weight_bytes_read_per_step'] / 1e9:.2f} GB "
                 f"at {b['copy_bandwidth_Bps'] / 1e12:.2f} TB/s)" if b["bandwidth_bound_ms"] else "")
        print(f"\n== cost-only {b['shape']}, prefix {b['prefix']}, head {b['head']} ==")
        print(f"plain step {b['plain_step_ms']:.3f} ms{bound} | round at budget {b['budget']} "
              f"{b['round_ms']:.3f} ms | ratio {b['round_over_plain_step']:.2f}")
        print("round split ms: " + ", ".join(f"{k} {v:.3f}" for k, v in b["round_split_ms"].items()))


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        budgets = sorted({int(x) for x in a.budgets.split(",") if x.strip()})
    except ValueError:
        print(f"error: --budgets must be a comma list of integers, got {a.budgets!r}", file=sys.stderr)
        return 2
    try:
        for b in budgets:
            DecodeConfig(budget=b)
        if a.max_new_tokens < 1:
            raise JetSpecError("--max-new-tokens must be positive")
        res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": list(argv or sys.argv[1:]),
               "max_new_tokens": a.max_new_tokens, "budgets": budgets, "stop_at_eos": a.stop_at_eos,
               "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
        if not a.no_engine_model:
            res["target_run"] = bench_target(a, budgets)
        shapes = a.cost_shapes
        if shapes == "auto":
            shapes = "qwen3-8b" if torch.cuda.is_available() and a.device != "cpu" else "none"
        shapes = [x.strip() for x in shapes.split(",") if x.strip() and x.strip() != "none"]
        bad = [x for x in shapes if x not in SHAPES]
        if bad:
            raise JetSpecError(f"unknown --cost-shapes {bad}; use {', '.join(SHAPES)} or none")
        res["cost_only"] = {x: bench_cost(a, x) for x in shapes}
    except JetSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    if a.json:
        print(json.dumps(res))
    else:
        print_tables(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
