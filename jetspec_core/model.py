"""Our own forward of the supported decoder-only targets over Hugging Face weights.

One module for the llama / qwen2 / qwen3 family (RMSNorm, RoPE, grouped-query attention,
SwiGLU MLP; qwen2 adds q/k/v biases, qwen3 adds per-head q/k RMSNorm). It runs batch 1 over a
static KV cache and takes any attention mask over (cache + new rows), so the same call does
prefill (causal), a plain decode step (one row) and a tree verify (ancestor mask). Hidden states
of chosen layers are tapped on the way. Keeping the hot path ours keeps it independent of the
transformers version and lets the kernels replace exactly one function (`attend`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import JetSpecError

# model_type -> (q/k/v bias, per-head q/k norm)
ARCHITECTURES = {
    "llama": (False, False),
    "qwen2": (True, False),
    "qwen3": (False, True),
}


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a target that the decoder, the head and the kernels need."""

    arch: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position: int

    @staticmethod
    def from_hf_config(cfg) -> "ModelShape":
        arch = getattr(cfg, "model_type", None)
        if arch not in ARCHITECTURES:
            raise JetSpecError(
                f"unsupported target architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise JetSpecError(f"unsupported RoPE type {rope_type!r} (only 'default' is supported)")
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        heads = cfg.num_attention_heads
        return ModelShape(
            arch=arch,
            num_layers=cfg.num_hidden_layers,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_heads=heads,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            vocab_size=cfg.vocab_size,
            rms_norm_eps=cfg.rms_norm_eps,
            rope_theta=float(theta),
            max_position=getattr(cfg, "max_position_embeddings", 2048),
        )


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in fp32, cast back before the weight (as the HF reference does)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def rope_cos_sin(pos: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of shape (..., head_dim) for integer positions `pos` (...)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim))
    ang = pos.float()[..., None] * inv  # (..., head_dim/2)
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., heads, T, D) with cos/sin (..., T, D): rotate-half RoPE."""
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.unsqueeze(-3) + rot * sin.unsqueeze(-3)


def sdpa_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reference attention. q (Hq, N, D), k/v (Hkv, S, D), mask (N, S) bool → (Hq, N, D)."""
    rep = q.shape[0] // k.shape[0]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=0)
        v = v.repeat_interleave(rep, dim=0)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class KVCache:
    """Static per-layer K/V buffers; rows [0, length) are committed context."""

    def __init__(self, shape: ModelShape, capacity: int, device, dtype):
        size = (shape.num_layers, shape.num_kv_heads, capacity, shape.head_dim)
        self.k = torch.zeros(size, device=device, dtype=dtype)
        self.v = torch.zeros(size, device=device, dtype=dtype)
        self.capacity = capacity
        self.length = 0

    def compact(self, rows: torch.Tensor) -> None:
        """Keep the scratch rows `length + rows` (indices into the last forward's new rows),
        moved to contiguous slots [length, length + len(rows)); drop the others."""
        src = rows.to(self.k.device) + self.length
        n = int(rows.numel())
        dst = slice(self.length, self.length + n)
        self.k[:, :, dst] = self.k[:, :, src]
        self.v[:, :, dst] = self.v[:, :, src]
        self.length += n


CPU_PAD_ROWS = (4, 16)   # lm_head row counts strictly between these are padded to the second on a CPU


def column_major_on_cpu(params) -> int:
    """Store 2-D CPU parameters column-major: the same (out, in) tensor, values unchanged, strides
    (1, out). fp32 `F.linear` then multiplies by a row-major (in, out) matrix, which the CPU GEMM
    ran faster at the few rows a small tree has (the 2-core Xeon, torch 2.13: 1.6–3x per GEMM at
    16 rows, `docs/measured/cpu-ab.py gemm`; 1–7 % end to end for plain and JetSpec decoding alike). Returns how
    many parameters changed (already column-major ones and non-CPU ones are left)."""
    changed = 0
    for p in params:
        if p.device.type == "cpu" and p.dim() == 2 and p.shape[0] > 1 and p.stride() != (1, p.shape[0]):
            p.data = p.data.t().contiguous().t()
            changed += 1
    return changed


class TargetModel(torch.nn.Module):
    """Batch-1 forward of a llama/qwen2/qwen3 model from its HF state dict."""

    def __init__(self, shape: ModelShape, state: dict[str, torch.Tensor], tied: bool):
        super().__init__()
        self.shape = shape
        bias, qk_norm = ARCHITECTURES[shape.arch]
        self.qkv_bias, self.qk_norm = bias, qk_norm
        get = lambda name: state[name]  # noqa: E731
        self.embed = torch.nn.Parameter(get("model.embed_tokens.weight"), requires_grad=False)
        head = self.embed if tied or "lm_head.weight" not in state else get("lm_head.weight")
        self.lm_head = torch.nn.Parameter(head, requires_grad=False) if head is not self.embed else self.embed
        self.norm = torch.nn.Parameter(get("model.norm.weight"), requires_grad=False)
        self.layers = torch.nn.ModuleList()
        for i in range(shape.num_layers):
            p = f"model.layers.{i}."
            names = ["input_layernorm.weight", "post_attention_layernorm.weight",
                     "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                     "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                     "mlp.down_proj.weight"]
            if bias:
                names += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
            if qk_norm:
                names += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
            layer = torch.nn.ParameterDict(
                {n.replace(".", "_"): torch.nn.Parameter(get(p + n), requires_grad=False) for n in names})
            self.layers.append(layer)
        self.attend = sdpa_attend  # replaced by the backend (Triton on CUDA)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self.shape, capacity, self.device, self.dtype)

    def linear_weights(self) -> list[torch.nn.Parameter]:
        """The decoder layers' projection matrices (not the embedding / lm_head)."""
        return [p for layer in self.layers for name, p in layer.items() if name.endswith("proj_weight")]

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden (…, H) → logits (…, V) in fp32. On a CPU, 5–15 rows are padded to 16
        (values unchanged): there the lm_head GEMM of 15 rows took 1.4–2x as long as one of 16
        (SmolLM2's 49,152 × 576 in fp32, torch 2.13 on the 2-core Xeon: 13–24 ms against 8–15 ms,
        `docs/measured/cpu-ab.py gemm`) — the draft's 15 depths hit exactly that; at 8 rows the runs
        disagreed (17 against 12 ms once, 8–11 against 8–15 ms later)."""
        n = hidden.shape[0]
        if hidden.dim() == 2 and hidden.device.type == "cpu" and CPU_PAD_ROWS[0] < n < CPU_PAD_ROWS[1]:
            pad = hidden.new_zeros(CPU_PAD_ROWS[1] - n, hidden.shape[1])
            return F.linear(torch.cat([hidden, pad]), self.lm_head)[:n].float()
        return F.linear(hidden, self.lm_head).float()

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor, cache: KVCache, mask: torch.Tensor,
                taps: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run N new rows on top of the cache.

        ids, pos (N,); mask (N, cache.length + N) bool, True = may attend. The new K/V rows are
        written at [cache.length, cache.length + N) but `cache.length` does not move: the caller
        keeps rows with `cache.compact`. Returns logits (N, V) fp32 and the tapped hidden states
        (N, len(taps) * H) — outputs of decoder layer L for L in taps — or None.
        """
        s = self.shape
        n, past = ids.shape[0], cache.length
        if past + n > cache.capacity:
            raise JetSpecError(f"context full: {past + n} rows exceed the cache of {cache.capacity}")
        x = self.embed_tokens(ids)  # (N, H)
        cos, sin = rope_cos_sin(pos, s.head_dim, s.rope_theta, x.dtype)  # (N, D)
        tapped = []
        for li, w in enumerate(self.layers):
            h = rms_norm(x, w["input_layernorm_weight"], s.rms_norm_eps)
            q = F.linear(h, w["self_attn_q_proj_weight"], w["self_attn_q_proj_bias"] if self.qkv_bias else None)
            k = F.linear(h, w["self_attn_k_proj_weight"], w["self_attn_k_proj_bias"] if self.qkv_bias else None)
            v = F.linear(h, w["self_attn_v_proj_weight"], w["self_attn_v_proj_bias"] if self.qkv_bias else None)
            q = q.view(n, s.num_heads, s.head_dim).transpose(0, 1)      # (Hq, N, D)
            k = k.view(n, s.num_kv_heads, s.head_dim).transpose(0, 1)   # (Hkv, N, D)
            v = v.view(n, s.num_kv_heads, s.head_dim).transpose(0, 1)
            if self.qk_norm:
                q = rms_norm(q, w["self_attn_q_norm_weight"], s.rms_norm_eps)
                k = rms_norm(k, w["self_attn_k_norm_weight"], s.rms_norm_eps)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            cache.k[li, :, past:past + n] = k
            cache.v[li, :, past:past + n] = v
            o = self.attend(q, cache.k[li, :, :past + n], cache.v[li, :, :past + n], mask)  # (Hq, N, D)
            o = o.transpose(0, 1).reshape(n, s.num_heads * s.head_dim)
            x = x + F.linear(o, w["self_attn_o_proj_weight"])
            h = rms_norm(x, w["post_attention_layernorm_weight"], s.rms_norm_eps)
            g = F.linear(h, w["mlp_gate_proj_weight"])
            u = F.linear(h, w["mlp_up_proj_weight"])
            x = x + F.linear(F.silu(g) * u, w["mlp_down_proj_weight"])
            if li in taps:
                tapped.append(x)
        logits = self.logits(rms_norm(x, self.norm, s.rms_norm_eps))
        hidden = None
        if taps:
            by_layer = dict(zip(sorted(set(taps)), tapped))
            hidden = torch.cat([by_layer[t] for t in taps], dim=-1)
        return logits, hidden
