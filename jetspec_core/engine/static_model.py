"""Static-shape forwards of the target and of the draft head over their existing weights.

Every shape here is fixed by the number of new rows N (a tree-size bucket) and the cache
capacity S, and every per-round quantity (the prefix length, the root token) is a device
tensor, so one captured CUDA graph serves every round and every prefix length:

- `StaticTarget` runs the llama / qwen2 / qwen3 forward of a `TargetModel` over its own KV
  cache (L, Hkv, S, D). The new rows are written at [prefix, prefix + N); attention covers the
  whole capacity with a mask built on the device (prefix rows visible to all, tree rows by the
  ancestor mask), or the Triton tree-attention kernel when it is available.
- In batch-invariant mode (`StaticTarget(..., batch_invariant=True)`, CUDA) every linear is
  `kernels/bi_matmul.py` (one tile config per weight whatever N is, no split-K) and attention is
  `kernels/bi_attention.py` (each row reduces over its keys in position order), for every
  forward including the prefill: a row's result is then bit-identical whatever N is, which other
  rows are present and whether its ancestors are tree rows or committed rows. RMSNorm (the
  Triton kernel: one program per row), RoPE, SiLU·mul, residual adds and embedding are per-row
  already; the runner refuses the mode on CUDA without the Triton RMSNorm.
- `StaticHead` runs the causal parallel draft head with its context keys/values cached: the
  fused features of committed rows are projected once, when they are committed.

Weights are shared with the reference model, not copied: q/k/v and gate/up are re-packed in
place into one matrix each (the reference parameters become views of it, values unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import backend
from ..errors import JetSpecError
from ..head import DraftHead
from ..model import TargetModel
from .fused import Fused


def fuse_rows(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Concatenate parameters along dim 0 into one tensor and turn each into a view of it.

    Idempotent: parameters that are already consecutive views of one storage (packed by an
    earlier engine over the same model) are returned as that view, not copied again."""
    base = params[0].data
    storage = base.untyped_storage()
    off, packed = base.storage_offset(), True
    for p in params:
        d = p.data
        if (d.untyped_storage().data_ptr() != storage.data_ptr() or d.storage_offset() != off
                or not d.is_contiguous()):
            packed = False
            break
        off += d.numel()
    n = sum(p.shape[0] for p in params)
    if packed:
        return torch.empty(0, dtype=base.dtype, device=base.device).set_(
            storage, base.storage_offset(), (n, *base.shape[1:]))
    fused = torch.cat([p.data for p in params], dim=0)
    off = 0
    for p in params:
        p.data = fused[off:off + p.shape[0]]
        off += p.shape[0]
    return fused


def row_major(p: torch.nn.Parameter) -> torch.Tensor:
    """p's data, contiguous: a CPU `Decoder` stores projection matrices column-major
    (`model.column_major_on_cpu`), and the engine's kernels want rows. Re-laid in place, values unchanged."""
    if not p.data.is_contiguous():
        p.data = p.data.contiguous()
    return p.data


def rope_table(n_pos: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (n_pos, head_dim) exactly as `model.rope_cos_sin` computes them per position."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    ang = torch.arange(n_pos, device=device).float()[:, None] * inv
    emb = torch.cat([ang, ang], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def visible(prefix: torch.Tensor, anc: torch.Tensor, ar: torch.Tensor) -> torch.Tensor:
    """(N, S) bool: row i sees key j when j < prefix, or j = prefix + t with anc[i, t]."""
    n = anc.shape[0]
    rel = ar - prefix                                    # (S,)
    in_tree = (rel >= 0) & (rel < n)
    tree = anc[:, rel.clamp(0, n - 1)] & in_tree          # (N, S)
    return tree | (rel < 0)


def pick_tree_attention(device: torch.device, force: str | None = None):
    """The Triton tree-attention kernel when the backend picks Triton for this device (see
    `jetspec_core.backend`) and the kernel agrees with SDPA on a probe; else None, which means
    dense-mask SDPA. Returns (kernel or None, a note for logs)."""
    if force == "sdpa" or device.type != "cuda":
        return None, "sdpa"
    try:
        from .. import backend
        from ..kernels import tree_attention as ta

        if not backend.use_triton(torch.empty(0, device=device)):
            return None, "sdpa (backend setting: reference)"
        fn, pack = ta.tree_attention_triton, ta.pack_ancestor_bits_triton
        g = torch.Generator(device=device).manual_seed(0)
        for hq, hkv, n, d in ((9, 3, 5, 64), (8, 2, 33, 128)):
            s = 200
            q = torch.randn(n, hq, d, device=device, generator=g).to(torch.bfloat16).transpose(0, 1)
            k = torch.randn(hkv, s, d, device=device, generator=g).to(torch.bfloat16)
            v = torch.randn(hkv, s, d, device=device, generator=g).to(torch.bfloat16)
            par = (torch.arange(n, device=device) - 1 - (torch.arange(n, device=device) % 3 == 2).long()).clamp(min=0)
            anc = torch.eye(n, dtype=torch.bool, device=device)
            for _ in range(n):
                anc = anc | anc[par]
            plen = torch.full((1,), 100, device=device, dtype=torch.int32)
            got = fn(q, k, v, plen, pack(anc))
            mask = visible(plen[0].long(), anc, torch.arange(s, device=device))
            rep = hq // hkv
            ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(rep, 0),
                                                 v.float().repeat_interleave(rep, 0), attn_mask=mask)
            if not torch.allclose(got.float(), ref, atol=3e-2, rtol=3e-2):
                raise RuntimeError("probe mismatch")
        return (fn, pack), "triton tree attention"
    except Exception as e:  # noqa: BLE001 - missing or broken kernel: use SDPA
        return None, f"sdpa (tree-attention kernel unavailable: {type(e).__name__}: {str(e)[:120]})"


class Attention:
    """Attention of N new rows over one layer's cache rows, shared by all layers of a forward.

    `prepare` runs once per forward (mask or bit rows); `__call__` once per layer."""

    def __init__(self, kernel=None):
        self.kernel = kernel

    def prepare(self, prefix: torch.Tensor, anc: torch.Tensor, ar: torch.Tensor, rep: int, dtype,
                bits: torch.Tensor | None = None):
        """bits: anc already bit-packed by the kernel's packer (a mask that never changes)."""
        if self.kernel is not None:
            return ("kernel", prefix.to(torch.int32).reshape(1), self.kernel[1](anc) if bits is None else bits)
        vis = visible(prefix, anc, ar)                                     # (N, S)
        bias = torch.zeros(vis.shape, device=vis.device, dtype=dtype).masked_fill_(~vis, float("-inf"))
        return ("sdpa", bias.repeat(rep, 1), None)                         # (rep·N, S)

    def __call__(self, prep, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (N, Hq, D); k/v (Hkv, S, D) → (N, Hq·D)."""
        n, hq, d = q.shape
        hkv = k.shape[0]
        if prep[0] == "kernel":
            o = self.kernel[0](q.transpose(0, 1), k, v, prep[1], prep[2])   # (Hq, N, D)
            return o.transpose(0, 1).reshape(n, hq * d)
        # grouped-query attention without copying K/V: the rep query heads of one KV head are
        # stacked along the row axis, (Hkv, rep·N, D); head h uses KV head h // rep.
        qg = q.transpose(0, 1).reshape(hkv, (hq // hkv) * n, d)
        o = F.scaled_dot_product_attention(qg[None], k[None], v[None], attn_mask=prep[1][None, None])
        return o[0].reshape(hq, n, d).transpose(0, 1).reshape(n, hq * d)


class InvariantAttention(Attention):
    """Batch-invariant attention (`kernels/bi_attention.py`): each row walks its keys in position
    order with fixed blocks, so its output does not depend on N, the other rows or the cache size."""

    def __init__(self):
        super().__init__(None)
        from ..kernels import bi_attention

        self.kernels = bi_attention

    def prepare(self, prefix: torch.Tensor, anc: torch.Tensor, ar: torch.Tensor, rep: int, dtype):
        paths, depth = self.kernels.tree_paths(anc)                      # (N, N+1), (N,) int32
        return ("invariant", prefix.to(torch.int32).reshape(1), paths, depth)

    def __call__(self, prep, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (N, Hq, D); k/v (Hkv, S, D) → (N, Hq·D)."""
        n, hq, d = q.shape
        return self.kernels.bi_tree_attention(q, k, v, prep[1], prep[2], prep[3]).view(n, hq * d)


def spans_devices(model: torch.nn.Module) -> bool:
    """Whether the model's weights sit on more than one device (an HF device_map)."""
    return len({p.device for p in model.parameters()}) > 1


def _mm_fp32_works(w: torch.Tensor) -> bool:
    """Whether `torch.mm(x, w.t(), out_dtype=torch.float32)` runs here and matches an fp32
    product (CUDA, 16-bit weights); otherwise logits are rounded to the weight dtype first."""
    if w.device.type != "cuda" or w.dtype not in (torch.bfloat16, torch.float16):
        return False
    try:
        x = torch.randn(3, w.shape[1], device=w.device, generator=torch.Generator(device=w.device).manual_seed(0)).to(w.dtype)
        got = torch.mm(x, w[:64].t(), out_dtype=torch.float32)
        ref = x.float() @ w[:64].float().t()
        return got.dtype == torch.float32 and bool(torch.allclose(got, ref, atol=1e-2, rtol=1e-2))
    except (RuntimeError, TypeError):
        return False


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: torch.Tensor
    qkv_b: torch.Tensor | None
    o: torch.Tensor
    gu: torch.Tensor
    down: torch.Tensor
    qk_norm: torch.Tensor | None  # (2·D,) = [q_norm | k_norm] (Qwen3, the draft head) or None


class StaticTarget:
    """The target's forward with a static KV cache of `capacity` rows (see the module doc)."""

    def __init__(self, model: TargetModel, capacity: int, taps: tuple[int, ...] = (),
                 fused: Fused | None = None, attention: Attention | None = None, per_layer: bool = False,
                 batch_invariant: bool = False):
        s = model.shape
        self.model, self.shape, self.taps = model, s, tuple(taps)
        self.capacity = capacity
        dev, dt = model.device, model.dtype
        self.device, self.dtype = dev, dt
        # a target spread over devices (HF device_map) keeps one K/V tensor per layer, on the
        # layer's device, and moves activations between layers (eager: no CUDA graphs then)
        self.layer_dev = [w["input_layernorm_weight"].device for w in model.layers]
        self.per_layer = per_layer or spans_devices(model)
        self.fused = fused or Fused(dev, dt, force="torch")
        self.batch_invariant = batch_invariant
        self.attention = InvariantAttention() if batch_invariant else (attention or Attention())
        if batch_invariant:
            from ..kernels.bi_matmul import bi_matmul

            self._bi_matmul = bi_matmul
        self.layers = []
        for w in model.layers:
            qkv = fuse_rows([w["self_attn_q_proj_weight"], w["self_attn_k_proj_weight"],
                             w["self_attn_v_proj_weight"]])
            b = (fuse_rows([w["self_attn_q_proj_bias"], w["self_attn_k_proj_bias"], w["self_attn_v_proj_bias"]])
                 if model.qkv_bias else None)
            gu = fuse_rows([w["mlp_gate_proj_weight"], w["mlp_up_proj_weight"]])
            self.layers.append(_Layer(
                ln1=w["input_layernorm_weight"].data, ln2=w["post_attention_layernorm_weight"].data,
                qkv=qkv, qkv_b=b, o=row_major(w["self_attn_o_proj_weight"]), gu=gu,
                down=row_major(w["mlp_down_proj_weight"]),
                qk_norm=fuse_rows([w["self_attn_q_norm_weight"], w["self_attn_k_norm_weight"]])
                if model.qk_norm else None))
        size = (s.num_kv_heads, capacity, s.head_dim)
        if self.per_layer:
            self.k = [torch.zeros(size, device=d, dtype=dt) for d in self.layer_dev]
            self.v = [torch.zeros(size, device=d, dtype=dt) for d in self.layer_dev]
        else:  # one (L, Hkv, S, D) tensor: a commit moves rows of every layer in one op
            self.k = torch.zeros((s.num_layers, *size), device=dev, dtype=dt)
            self.v = torch.zeros((s.num_layers, *size), device=dev, dtype=dt)
        self.ar = torch.arange(capacity, device=dev)
        self.cos, self.sin = rope_table(capacity, s.head_dim, s.rope_theta, dev, dt)
        self.fp32_logits = batch_invariant or _mm_fp32_works(model.lm_head)

    def move_rows(self, rows: torch.Tensor, start: torch.Tensor, count: torch.Tensor) -> None:
        """Copy cache rows start + rows[:count] → [start, start + count) in every layer (the commit of the
        accepted tree rows: rows increasing, rows[i] ≥ i). start, count: 0-d device tensors."""
        if not self.per_layer:  # one launch for every layer and head (kernels/kv_compact.py)
            backend.kv_compact(self.k, self.v, rows, start, count, relative=True)
            return
        src = start + rows
        dst = start + torch.arange(src.shape[0], device=src.device)
        for k, v in zip(self.k, self.v):  # rows past count copy onto themselves
            s_ = torch.where(dst < start + count, src, dst).to(k.device)
            d_ = dst.to(k.device)
            k.index_copy_(1, d_, k.index_select(1, s_))
            v.index_copy_(1, d_, v.index_select(1, s_))

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
               residual: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """residual + x @ w.T + b: the batch-invariant kernel in that mode (out of place, into `out`
        when given), else cuBLAS (`addmm_` into the residual, which it overwrites — an out-of-place
        addmm first copies the residual into its result, one more kernel per call — and `F.linear`
        without one; `out` is only for the batch-invariant kernel)."""
        if self.batch_invariant:
            return self._bi_matmul(x, w, b, residual, out=out)
        if residual is not None:
            return residual.addmm_(x, w.t())
        return F.linear(x, w, b)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden (N, H) → logits (N, V) fp32. In bf16/fp16 on CUDA the product is
        written in fp32 (not rounded to 16 bits first), so near-ties are not made exact ties."""
        if self.batch_invariant:
            return self._bi_matmul(hidden, self.model.lm_head, out_dtype=torch.float32)
        if self.fp32_logits:
            return torch.mm(hidden, self.model.lm_head.t(), out_dtype=torch.float32)
        return F.linear(hidden, self.model.lm_head).float()

    def forward(self, ids: torch.Tensor, depth: torch.Tensor, anc: torch.Tensor, prefix: torch.Tensor,
                logits: bool = True, attention: Attention | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """ids, depth (N,); anc (N, N) bool ancestor-or-self; prefix 0-d long (cache rows before).

        Writes the new K/V rows at [prefix, prefix + N) (the caller commits what it keeps).
        Returns logits (N, V) fp32 (or None) and the tapped hidden states (N, n·H) (or None).
        `attention` overrides the engine's (the prefill uses dense-mask SDPA), except in
        batch-invariant mode: there every forward uses the invariant kernel, whose rows do not
        depend on the cache capacity either (plain and JetSpec runs may reserve different ones)."""
        s, f = self.shape, self.fused
        attn = self.attention if self.batch_invariant else (attention or self.attention)
        n = ids.shape[0]
        hq, hkv, d = s.num_heads, s.num_kv_heads, s.head_dim
        pos = prefix + depth

        def per_device(dev):  # rope and attention inputs (once per device of the layers)
            pre, an, ar = prefix.to(dev), anc.to(dev), self.ar.to(dev)
            return (pos.to(dev), pre.reshape(1), self.cos.to(dev), self.sin.to(dev),
                    attn.prepare(pre, an, ar, hq // hkv, self.dtype))

        consts = {self.device: per_device(self.device)}
        x = F.embedding(ids, self.model.embed)                         # (N, H), updated in place below
        hidden = torch.empty(n, len(self.taps) * s.hidden_size, device=self.device, dtype=self.dtype) \
            if self.taps else None
        hs = s.hidden_size
        taps: dict[int, list[torch.Tensor]] = {}                     # layer → its slices (a layer may repeat)
        for i, t in enumerate(self.taps):
            taps.setdefault(t, []).append(hidden[:, i * hs:(i + 1) * hs])
        for li, w in enumerate(self.layers):
            if self.per_layer and self.layer_dev[li] != x.device:
                x = x.to(self.layer_dev[li])
                if x.device not in consts:
                    consts[x.device] = per_device(x.device)
            p, start, cos, sin, prep = consts[x.device]                # (N,), (1,), (S, D), (S, D)
            h = f.rms_norm(x, w.ln1, s.rms_norm_eps)
            qkv = self.linear(h, w.qkv, w.qkv_b).view(n, hq + 2 * hkv, d)  # (N, Hq+2Hkv, D)
            # q, k normed (Qwen3) and rotated in place; k, v written to rows [prefix, prefix + N)
            f.rope_kv(qkv, hq, p, start, cos, sin, self.k[li], self.v[li], w.qk_norm, s.rms_norm_eps)
            o = attn(prep, qkv[:, :hq], self.k[li], self.v[li])  # (N, Hq·D)
            x = self.linear(o, w.o, residual=x)
            h = f.rms_norm(x, w.ln2, s.rms_norm_eps)
            slices = taps.get(li, [])
            if slices and self.batch_invariant and slices[0].device == x.device:  # straight into hidden
                x = self.linear(f.silu_mul(self.linear(h, w.gu)), w.down, residual=x, out=slices[0])
                slices = slices[1:]
            else:
                x = self.linear(f.silu_mul(self.linear(h, w.gu)), w.down, residual=x)
            for tap in slices:  # copied now: the next layers overwrite x in place
                tap.copy_(x)
        if not logits:
            return None, hidden
        x = x.to(self.model.norm.device)
        return self.logits(f.rms_norm(x, self.model.norm, s.rms_norm_eps)).to(self.device), hidden


class StaticHead:
    """The draft head with cached context K/V; block slots are scratch rows past the context.

    kernel: the tree-attention kernel pair of `pick_tree_attention` for the head's attention (its
    block is a chain: a causal tree over the context), or None for dense-mask SDPA."""

    def __init__(self, head: DraftHead, target: StaticTarget, kernel=None):
        c = head.config
        if target.shape.hidden_size != c.hidden_size:
            raise JetSpecError("draft head hidden size does not match the target")
        self.head, self.c, self.target = head, c, target
        self.block = c.block_size
        dev = head.fc.weight.device
        self.dtype = head.fc.weight.dtype
        self.fused = target.fused if self.dtype == target.dtype else Fused(dev, self.dtype, force="torch")
        self.attention = Attention(kernel)
        cap = target.capacity + c.block_size
        self.layers = []
        for lay in head.layers:
            qkv = fuse_rows([lay.q_proj.weight, lay.k_proj.weight, lay.v_proj.weight])
            gu = fuse_rows([lay.gate_proj.weight, lay.up_proj.weight])
            self.layers.append(_Layer(ln1=lay.input_layernorm.data, ln2=lay.post_attention_layernorm.data,
                                      qkv=qkv, qkv_b=None, o=row_major(lay.o_proj.weight), gu=gu,
                                      down=row_major(lay.down_proj.weight),
                                      qk_norm=fuse_rows([lay.q_norm, lay.k_norm])))
        # the context rows' K/V projections of all layers, stacked: one GEMM and one RoPE launch per append
        hq_d = c.num_attention_heads * c.head_dim
        self.ctx_kv = torch.cat([w.qkv[hq_d:] for w in self.layers])                  # (L·2·Hkv·D, H)
        self.qk_norms = torch.stack([w.qk_norm for w in self.layers])                # (L, 2·D)
        size = (c.num_hidden_layers, c.num_key_value_heads, cap, c.head_dim)
        self.k = torch.zeros(size, device=dev, dtype=self.dtype)
        self.v = torch.zeros(size, device=dev, dtype=self.dtype)
        self.ar = torch.arange(cap, device=dev)
        self.cos, self.sin = rope_table(cap, c.head_dim, c.rope_theta, dev, self.dtype)
        self.tril = torch.ones(self.block, self.block, dtype=torch.bool, device=dev).tril()
        self.tril_bits = kernel[1](self.tril) if kernel is not None else None
        self.is_root = torch.arange(self.block, device=dev) == 0                     # block slot 0

    def append(self, hidden: torch.Tensor, prefix: torch.Tensor) -> None:
        """Context rows: tapped target hidden (R, n·Ht) of the rows at [prefix, prefix + R)."""
        c, f = self.c, self.fused
        r = hidden.shape[0]
        feats = f.rms_norm(F.linear(hidden.to(self.dtype), self.head.fc.weight), self.head.hidden_norm.data,
                           c.rms_norm_eps)                                 # (R, H)
        kv = F.linear(feats, self.ctx_kv).view(r, len(self.layers), 2 * c.num_key_value_heads, c.head_dim)
        f.rope_kv(kv, 0, None, prefix.reshape(1), self.cos, self.sin, self.k, self.v, self.qk_norms, c.rms_norm_eps)

    def draft(self, root: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """One head forward over [root, MASK × (B−1)] at positions prefix + slot, seeing the
        context rows [0, prefix). Returns the logits (B−1, V) for depths 1..B−1, in the target's dtype
        (the tree step takes the top-K of their log-softmax, `backend.depth_topk`)."""
        c, f, t = self.c, self.fused, self.target
        ids = torch.where(self.is_root, root, c.mask_token_id)
        x = F.embedding(ids, t.model.embed).to(self.dtype)                 # (B, H)
        start = prefix.reshape(1)                                          # block row i sits at prefix + i
        hq, hkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        prep = self.attention.prepare(prefix, self.tril, self.ar, hq // hkv, self.dtype, bits=self.tril_bits)
        for li, w in enumerate(self.layers):
            h = f.rms_norm(x, w.ln1, c.rms_norm_eps)
            qkv = F.linear(h, w.qkv).view(self.block, hq + 2 * hkv, d)
            f.rope_kv(qkv, hq, None, start, self.cos, self.sin, self.k[li], self.v[li], w.qk_norm, c.rms_norm_eps)
            x.addmm_(self.attention(prep, qkv[:, :hq], self.k[li], self.v[li]), w.o.t())   # in place
            h = f.rms_norm(x, w.ln2, c.rms_norm_eps)
            x.addmm_(f.silu_mul(F.linear(h, w.gu)), w.down.t())
        out = f.rms_norm(x, self.head.norm.data, c.rms_norm_eps)[1:]     # (B−1, H)
        return F.linear(out.to(t.dtype), t.model.lm_head)
