"""Self-distillation data on disk: token ids of prompt + the target's own response, per sequence.

One safetensors file: `tokens` (all sequences concatenated, int32), `offsets` (n+1, int64),
`prompt_lens` (n, int32) and `kinds` (n, int32 into the `kinds` list of the metadata). The
metadata (string → string) records the tokenizer fingerprint, which `check_tokenizer` compares
with the target before training, so data made with another tokenizer is refused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import JetSpecError

FORMAT = "jetspec-distill-1"


def tokenizer_fingerprint(tokenizer, vocab_size: int) -> str:
    """vocab size + a hash of the strings of ~100 token ids spread over the vocabulary."""
    if tokenizer is None or not hasattr(tokenizer, "convert_ids_to_tokens"):
        return f"v{vocab_size}-none"
    ids = sorted(set(range(min(vocab_size, 32))) | set(range(0, vocab_size, max(1, vocab_size // 64))))
    ids = [i for i in ids if i < len(tokenizer)]
    toks = [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
    digest = hashlib.sha256(json.dumps([len(tokenizer), toks]).encode()).hexdigest()[:16]
    return f"v{vocab_size}-{digest}"


@dataclass
class DistillData:
    """Sequences (prompt ids + response ids) with their prompt lengths and prompt kinds."""

    seqs: list[list[int]]
    prompt_lens: list[int]
    kinds: list[str]
    fingerprint: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.seqs) == len(self.prompt_lens) == len(self.kinds)):
            raise JetSpecError("distillation data: seqs, prompt_lens and kinds differ in length")
        for s, p in zip(self.seqs, self.prompt_lens):
            if not 1 <= p < len(s):
                raise JetSpecError(f"distillation data: a prompt length {p} does not fit its sequence ({len(s)})")

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def response_tokens(self) -> int:
        return sum(len(s) - p for s, p in zip(self.seqs, self.prompt_lens))

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        kinds = sorted(set(self.kinds))
        flat = [t for s in self.seqs for t in s]
        offs = [0]
        for s in self.seqs:
            offs.append(offs[-1] + len(s))
        tensors = {"tokens": torch.tensor(flat, dtype=torch.int32),
                   "offsets": torch.tensor(offs, dtype=torch.int64),
                   "prompt_lens": torch.tensor(self.prompt_lens, dtype=torch.int32),
                   "kinds": torch.tensor([kinds.index(k) for k in self.kinds], dtype=torch.int32)}
        meta = {"format": FORMAT, "fingerprint": self.fingerprint, "kinds": json.dumps(kinds),
                "meta": json.dumps(self.meta)}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @staticmethod
    def load(path: str | Path) -> "DistillData":
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise JetSpecError(f"training data {path} does not exist; make it with `train data --out {path}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise JetSpecError(f"{path} is not a training-data file ({e})") from e
        if md.get("format") != FORMAT or not {"tokens", "offsets", "prompt_lens", "kinds"} <= set(t):
            raise JetSpecError(f"{path} is not a {FORMAT} training-data file")
        flat, offs = t["tokens"].tolist(), t["offsets"].tolist()
        kinds = json.loads(md["kinds"])
        return DistillData(seqs=[flat[a:b] for a, b in zip(offs, offs[1:])],
                           prompt_lens=t["prompt_lens"].tolist(),
                           kinds=[kinds[i] for i in t["kinds"].tolist()],
                           fingerprint=md["fingerprint"], meta=json.loads(md.get("meta", "{}")))

    def check_tokenizer(self, fingerprint: str, source: str = "the training data") -> None:
        if fingerprint != self.fingerprint:
            raise JetSpecError(
                f"{source} was made with a different tokenizer (fingerprint {self.fingerprint}, the target's "
                f"is {fingerprint}); regenerate it with `train data` for this target")

    def split(self, holdout: float, seed: int) -> tuple[list[int], list[int]]:
        """(train indices, held-out indices): a seeded random split by *prompt*, so the several
        answers one prompt may have (greedy and sampled files joined) fall on the same side."""
        if not 0.0 <= holdout < 1.0:
            raise JetSpecError(f"holdout must be in [0, 1), got {holdout}")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (s, p) in enumerate(zip(self.seqs, self.prompt_lens)):
            groups.setdefault(tuple(s[:p]), []).append(i)
        members = list(groups.values())
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(members), generator=g).tolist()
        n_hold = int(round(len(members) * holdout))
        if holdout > 0 and len(members) >= 2:
            n_hold = max(1, n_hold)
        hold = sorted(i for j in perm[:n_hold] for i in members[j])
        train = sorted(i for j in perm[n_hold:] for i in members[j])
        return train, hold

    @staticmethod
    def concat(parts: list["DistillData"], sources: list[str] | None = None) -> "DistillData":
        """Several data files as one (e.g. greedy and sampled answers); one tokenizer required."""
        if not parts:
            raise JetSpecError("no training data given")
        names = sources or [f"file {i + 1}" for i in range(len(parts))]
        for d, name in zip(parts[1:], names[1:]):
            if d.fingerprint != parts[0].fingerprint:
                raise JetSpecError(f"training data {name} was made with a different tokenizer than {names[0]}")
        if len(parts) == 1:
            return parts[0]
        return DistillData(seqs=[s for d in parts for s in d.seqs],
                           prompt_lens=[p for d in parts for p in d.prompt_lens],
                           kinds=[k for d in parts for k in d.kinds], fingerprint=parts[0].fingerprint,
                           meta={"parts": [dict(d.meta, source=n) for d, n in zip(parts, names)]})
