"""The causal parallel draft head (DESIGN §1) and its published checkpoint format.

Context: hidden states tapped from n target layers, concatenated → `fc` → `hidden_norm`.
Block: `[anchor, MASK × (B−1)]` embedded with the target's embedding. Qwen3-style layers whose
queries come from the block only and whose keys/values are [context ; block] through the same
projections; causal inside the block. The final `norm` then the target's lm_head on slots 1..B−1
give one distribution per depth in one forward. A folder with `config.json` + `model.safetensors`
(tensor names as in the published JetSpec/DFlash heads: no embedding, no lm_head).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .calibration import Calibration
from .errors import JetSpecError
from .model import ModelShape, apply_rope, rms_norm, rope_cos_sin


def default_tap_layers(num_target_layers: int, n: int) -> list[int]:
    """n = 1 → [T//2]; else round(1 + i·(T−4)/(n−1)) for i = 0..n−1 (Python rounding)."""
    if n == 1:
        return [num_target_layers // 2]
    return [int(round(1 + i * (num_target_layers - 4) / (n - 1))) for i in range(n)]


@dataclass
class HeadConfig:
    """Shape of a draft head; `to_json` writes the published config.json fields."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    num_target_layers: int
    target_layer_ids: list[int]
    mask_token_id: int
    target_hidden_size: int
    block_size: int = 16
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    causal_head: bool = True
    dtype: str = "bfloat16"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.block_size < 2:
            raise JetSpecError(f"block_size must be >= 2, got {self.block_size}")
        if not self.target_layer_ids:
            raise JetSpecError("target_layer_ids is empty")

    @staticmethod
    def for_target(shape: ModelShape, mask_token_id: int, num_layers: int = 2, num_taps: int = 5,
                   block_size: int = 16) -> "HeadConfig":
        """A head shaped like one target layer, tapping the default layers."""
        return HeadConfig(
            hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=shape.num_heads,
            num_key_value_heads=shape.num_kv_heads, head_dim=shape.head_dim,
            vocab_size=shape.vocab_size, num_target_layers=shape.num_layers,
            target_layer_ids=default_tap_layers(shape.num_layers, num_taps),
            mask_token_id=mask_token_id, target_hidden_size=shape.hidden_size,
            block_size=block_size, rms_norm_eps=shape.rms_norm_eps, rope_theta=shape.rope_theta,
            max_position_embeddings=shape.max_position)

    def to_json(self) -> dict:
        return {
            "architectures": ["DFlashDraftModel"],
            "model_type": "qwen3",
            "block_size": self.block_size,
            "num_target_layers": self.num_target_layers,
            "num_hidden_layers": self.num_hidden_layers,
            "dflash_config": {"causal_head": self.causal_head, "target_layer_ids": self.target_layer_ids,
                              "mask_token_id": self.mask_token_id,
                              "target_hidden_size": self.target_hidden_size},
            "dtype": self.dtype,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "attention_bias": False,
            "hidden_act": "silu",
            **self.extra,
        }

    @staticmethod
    def from_json(d: dict) -> "HeadConfig":
        try:
            dc = d["dflash_config"]
            rope = d.get("rope_parameters") or {}
            heads = d["num_attention_heads"]
            known = {"architectures", "model_type", "block_size", "num_target_layers",
                     "num_hidden_layers", "dflash_config", "dtype", "torch_dtype", "hidden_size",
                     "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                     "vocab_size", "rope_parameters", "rope_theta", "rms_norm_eps",
                     "max_position_embeddings", "attention_bias", "hidden_act"}
            return HeadConfig(
                hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
                num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
                num_key_value_heads=d.get("num_key_value_heads", heads),
                head_dim=d.get("head_dim") or d["hidden_size"] // heads,
                vocab_size=d["vocab_size"], num_target_layers=d["num_target_layers"],
                target_layer_ids=list(dc["target_layer_ids"]), mask_token_id=dc["mask_token_id"],
                target_hidden_size=dc.get("target_hidden_size", d["hidden_size"]),
                block_size=d["block_size"], rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
                max_position_embeddings=d.get("max_position_embeddings", 8192),
                causal_head=bool(dc.get("causal_head", True)),
                dtype=str(d.get("dtype") or d.get("torch_dtype") or "bfloat16"),
                extra={k: v for k, v in d.items() if k not in known})
        except KeyError as e:
            raise JetSpecError(f"head config.json lacks the field {e.args[0]!r}") from e

    def check_fits(self, shape: ModelShape) -> None:
        """Raise a JetSpecError naming every mismatch with the target."""
        problems = []
        if self.target_hidden_size != shape.hidden_size:
            problems.append(f"target_hidden_size {self.target_hidden_size} != target hidden {shape.hidden_size}")
        if self.hidden_size != shape.hidden_size:
            problems.append(f"hidden_size {self.hidden_size} != target hidden {shape.hidden_size} "
                            "(the head uses the target's embedding and lm_head)")
        if self.vocab_size != shape.vocab_size:
            problems.append(f"vocab_size {self.vocab_size} != target vocab {shape.vocab_size}")
        if self.num_target_layers != shape.num_layers:
            problems.append(f"num_target_layers {self.num_target_layers} != target layers {shape.num_layers}")
        bad = [t for t in self.target_layer_ids if not 0 <= t < shape.num_layers]
        if bad:
            problems.append(f"target_layer_ids {bad} outside 0..{shape.num_layers - 1}")
        if not 0 <= self.mask_token_id < shape.vocab_size:
            problems.append(f"mask_token_id {self.mask_token_id} outside the vocabulary")
        if problems:
            raise JetSpecError("the draft head does not fit the target: " + "; ".join(problems))


class HeadLayer(torch.nn.Module):
    """One Qwen3-style draft layer: block queries attend to [context ; block]."""

    def __init__(self, c: HeadConfig):
        super().__init__()
        h, d = c.hidden_size, c.head_dim
        self.c = c
        self.q_proj = torch.nn.Linear(h, c.num_attention_heads * d, bias=False)
        self.k_proj = torch.nn.Linear(h, c.num_key_value_heads * d, bias=False)
        self.v_proj = torch.nn.Linear(h, c.num_key_value_heads * d, bias=False)
        self.o_proj = torch.nn.Linear(c.num_attention_heads * d, h, bias=False)
        self.q_norm = torch.nn.Parameter(torch.ones(d))
        self.k_norm = torch.nn.Parameter(torch.ones(d))
        self.gate_proj = torch.nn.Linear(h, c.intermediate_size, bias=False)
        self.up_proj = torch.nn.Linear(h, c.intermediate_size, bias=False)
        self.down_proj = torch.nn.Linear(c.intermediate_size, h, bias=False)
        self.input_layernorm = torch.nn.Parameter(torch.ones(h))
        self.post_attention_layernorm = torch.nn.Parameter(torch.ones(h))

    def _heads(self, x: torch.Tensor, proj, n: int, norm) -> torch.Tensor:
        b, t, _ = x.shape
        y = proj(x).view(b, t, n, self.c.head_dim).transpose(1, 2)  # (b, n, t, D)
        return rms_norm(y, norm, self.c.rms_norm_eps)

    def context_kv(self, ctx: torch.Tensor, rope_ctx) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (b, Hkv, C, D) of context rows: they depend on nothing else, so a
        decoder may compute them once per row and keep them (`HeadDrafter` does)."""
        c = self.c
        kc = apply_rope(self._heads(ctx, self.k_proj, c.num_key_value_heads, self.k_norm), *rope_ctx)
        vc = self.v_proj(ctx).view(*ctx.shape[:2], c.num_key_value_heads, c.head_dim).transpose(1, 2)
        return kc, vc

    def forward(self, x: torch.Tensor, ctx_kv: tuple[torch.Tensor, torch.Tensor], rope_x,
                mask: torch.Tensor) -> torch.Tensor:
        """x (b, M, H) block stream; ctx_kv the `context_kv` of the fused context (C rows);
        mask (b, M, C+M) bool."""
        c = self.c
        h = rms_norm(x, self.input_layernorm, c.rms_norm_eps)
        q = apply_rope(self._heads(h, self.q_proj, c.num_attention_heads, self.q_norm), *rope_x)
        kb = apply_rope(self._heads(h, self.k_proj, c.num_key_value_heads, self.k_norm), *rope_x)
        vb = self.v_proj(h).view(*h.shape[:2], c.num_key_value_heads, c.head_dim).transpose(1, 2)
        kc, vc = ctx_kv
        k, v = torch.cat([kc, kb], dim=2), torch.cat([vc, vb], dim=2)  # (b, Hkv, C+M, D)
        rep = c.num_attention_heads // c.num_key_value_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1))  # (b, Hq, M, D)
        o = o.transpose(1, 2).reshape(*x.shape[:2], -1)
        x = x + self.o_proj(o)
        h = rms_norm(x, self.post_attention_layernorm, c.rms_norm_eps)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class DraftHead(torch.nn.Module):
    """fc + hidden_norm over the tapped context, `num_hidden_layers` HeadLayers, final norm."""

    def __init__(self, c: HeadConfig):
        super().__init__()
        self.config = c
        self.fc = torch.nn.Linear(len(c.target_layer_ids) * c.target_hidden_size, c.hidden_size, bias=False)
        self.hidden_norm = torch.nn.Parameter(torch.ones(c.hidden_size))
        self.layers = torch.nn.ModuleList(HeadLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = torch.nn.Parameter(torch.ones(c.hidden_size))
        self.calibration: Calibration | None = None   # tree scores (calibration.json), not a weight

    def fuse(self, taps: torch.Tensor) -> torch.Tensor:
        """Tapped target hidden states (…, n·Ht) → context features (…, H)."""
        return rms_norm(self.fc(taps.to(self.fc.weight.dtype)), self.hidden_norm, self.config.rms_norm_eps)

    def context_kv(self, ctx: torch.Tensor, ctx_pos: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of fused context rows ctx (b, C, H) at ctx_pos (b, C)."""
        c = self.config
        rope_c = rope_cos_sin(ctx_pos, c.head_dim, c.rope_theta, ctx.dtype)
        return [layer.context_kv(ctx, rope_c) for layer in self.layers]

    def forward(self, block: torch.Tensor, block_pos: torch.Tensor, ctx: torch.Tensor | None,
                ctx_pos: torch.Tensor | None, mask: torch.Tensor,
                ctx_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """block (b, M, H) embedded block tokens at block_pos (b, M); ctx (b, C, H) fused features
        at ctx_pos (b, C) — or, instead, their per-layer `context_kv`; mask (b, M, C+M) bool.
        Returns the final-normed block hidden (b, M, H)."""
        c = self.config
        rope_x = rope_cos_sin(block_pos, c.head_dim, c.rope_theta, block.dtype)
        if ctx_kv is None:
            ctx_kv = self.context_kv(ctx, ctx_pos)
        x = block
        for layer, kv in zip(self.layers, ctx_kv):
            x = layer(x, kv, rope_x, mask)
        return rms_norm(x, self.norm, c.rms_norm_eps)

    # -- checkpoint -------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        dt = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.config.dtype, torch.float32)
        state = {_to_published(k): v.detach().to(dt).contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(self.config.to_json(), indent=2) + "\n")

    @staticmethod
    def load(folder: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> "DraftHead":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
        if not folder.is_dir():
            raise JetSpecError(f"head folder {folder} does not exist")
        if not cfg_path.is_file():
            raise JetSpecError(f"head folder {folder} has no config.json")
        if not w_path.is_file():
            raise JetSpecError(f"head folder {folder} has no model.safetensors (weights missing)")
        try:
            cfg = HeadConfig.from_json(json.loads(cfg_path.read_text()))
        except json.JSONDecodeError as e:
            raise JetSpecError(f"{cfg_path} is not valid JSON ({e.msg}); re-download or re-train the head") from e
        try:
            published = load_file(str(w_path))
        except (SafetensorError, OSError, ValueError) as e:
            raise JetSpecError(f"{w_path} is corrupt or truncated ({e}); re-download or re-train the head") from e
        head = DraftHead(cfg)
        state = {_from_published(k): v for k, v in published.items()}
        expected = head.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise JetSpecError(f"{w_path} does not match its config.json: missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}")
        wrong = [k for k in expected if expected[k].shape != state[k].shape]
        if wrong:
            raise JetSpecError(f"{w_path}: tensor {wrong[0]} has shape {tuple(state[wrong[0]].shape)}, "
                               f"config says {tuple(expected[wrong[0]].shape)}")
        head.load_state_dict(state)
        head.calibration = Calibration.load(folder)    # None when the folder has no calibration.json
        return head.to(device=device, dtype=dtype).eval()


# Our module names → the published tensor names (identity except the norm parameters and MLP).
def _to_published(k: str) -> str:
    parts = k.split(".")
    if parts[0] == "layers":
        i, rest = parts[1], parts[2]
        sub = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
               "o_proj": "self_attn.o_proj", "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm",
               "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "down_proj": "mlp.down_proj",
               "input_layernorm": "input_layernorm",
               "post_attention_layernorm": "post_attention_layernorm"}[rest]
        return f"layers.{i}.{sub}.weight"
    return k if k.endswith(".weight") else k + ".weight"


def _from_published(k: str) -> str:
    parts = k.split(".")
    if parts[0] == "layers":
        name = parts[-2]
        return f"layers.{parts[1]}.{name}" + ("" if name.endswith(("norm", "layernorm")) else ".weight")
    return k[: -len(".weight")] if k in ("hidden_norm.weight", "norm.weight") else k
