"""Fit draft heads to a frozen target by self-distillation (DESIGN §1, training).

One step: a batch of sequences (prompt + the target's own response) goes through the teacher
once (tapped hidden states and the final hidden of every position). For each sequence `anchors`
positions a are drawn at random in the response; each gives a block `[x_a, MASK × (B−1)]` at
absolute positions a..a+B−1 that sees the context rows < a and, causally, its own earlier slots.
All blocks of a sequence share one head forward (block rows packed side by side, the mask keeps
them apart). Slot d is trained towards the target's next-token distribution at position a+d−1
(teacher forcing on the target's own answer) with the temperature-scaled forward KL, no loss on
the anchor slot; depths weigh equally, or depth d by exp(−(d−1)/γ) with `depth_decay` γ > 0
(shallow slots decide most of the acceptance: a round reaches depth 5 in under a third of the
rounds). Several heads (e.g. 1, 2 and 3 layers) may train at once on the same teacher outputs,
which is how the number of draft layers is chosen.

Every random choice of step s comes from a generator seeded with (seed, s), so a run resumed
from its checkpoint continues exactly as an uninterrupted run would.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import JetSpecError
from ..head import DraftHead, HeadConfig
from .data import DistillData
from .teacher import teacher_forward


KL_KERNELS = ("auto", "torch", "triton")   # how the KL loss is computed (`--kl-kernel`; auto: triton on CUDA)


@dataclass
class TrainConfig:
    """Settings of one training run (every default is declared here once)."""

    layers: tuple[int, ...] = (2,)      # one head per entry: its number of draft layers
    steps: int = 3000                   # length of the LR schedule (a time limit may shorten it)
    time_limit_s: float | None = None   # wall clock for this session of training
    reserve_s: float = 15.0             # kept free under the time limit for evaluation and saving
    batch_size: int = 16                # sequences per step
    anchors: int = 24                   # blocks per sequence
    lr: float = 6e-4
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_temperature: float = 1.0
    kl_kernel: str = "auto"             # one of KL_KERNELS; "triton": the fused two-pass KL (kernels/fused_kl.py; CUDA;
                                        # 5.7x the PyTorch loss's speed on an H200), "auto": it on CUDA, else "torch"
    depth_decay: float = 0.0            # γ: depth d's loss weighs exp(−(d−1)/γ); 0: every depth alike
    holdout: float = 0.03               # fraction of sequences held out for evaluation
    eval_anchors: int = 8               # anchors per held-out sequence
    eval_every: int = 0                 # steps between evaluations (0: only at the end)
    ckpt_every_s: float = 120.0
    max_len: int = 1024                 # longer sequences are cut
    num_taps: int = 5
    block_size: int = 16
    seed: int = 0
    log_every: int = 10
    profile: bool = False               # time each phase of a step (synchronises the device)

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        checks = [
            (self.layers and all(1 <= x <= 16 for x in self.layers) and len(set(self.layers)) == len(self.layers),
             f"layers must be distinct integers in 1..16, got {self.layers}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.time_limit_s is None or self.time_limit_s > 0, "time limit must be positive"),
            (self.batch_size >= 1 and self.anchors >= 1, "batch size and anchors must be >= 1"),
            (self.lr > 0 and 0 <= self.min_lr_ratio <= 1, "lr must be > 0 and min_lr_ratio in [0, 1]"),
            (self.kl_temperature > 0, "the KL temperature must be > 0"),
            (self.kl_kernel in KL_KERNELS, f"kl_kernel must be one of {KL_KERNELS}, got {self.kl_kernel!r}"),
            (self.depth_decay >= 0, f"depth_decay must be >= 0 (0: uniform), got {self.depth_decay}"),
            (0 <= self.holdout < 1, f"holdout must be in [0, 1), got {self.holdout}"),
            (self.block_size >= 2 and self.max_len > self.block_size, "block_size >= 2 and max_len > block_size"),
        ]
        for ok, msg in checks:
            if not ok:
                raise JetSpecError(msg)

    def depth_weights(self) -> torch.Tensor:
        """(B−1,) loss weight of draft depths 1..B−1 (all 1 when depth_decay is 0)."""
        d = torch.arange(self.block_size - 1, dtype=torch.float32)
        return torch.exp(-d / self.depth_decay) if self.depth_decay > 0 else torch.ones_like(d)

    def lr_at(self, step: int, total: int) -> float:
        """Linear warm-up, then cosine decay to lr · min_lr_ratio at `total`."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        frac = min(1.0, (step - self.warmup) / max(1, total - self.warmup))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass
class Batch:
    ids: torch.Tensor          # (b, n) right-padded sequences (the teacher needs no padding mask)
    block_ids: torch.Tensor    # (b, k·B) [anchor, MASK…] per block
    block_pos: torch.Tensor    # (b, k·B) absolute positions a + i
    anchors: torch.Tensor      # (b, k) anchor positions a (0 for unused slots)
    label_pos: torch.Tensor    # (b, k, B−1) position whose target distribution is the label of depth d
    valid: torch.Tensor        # (b, k, B−1) bool: the depth has a label (inside the sequence)

    def mask_on(self, device) -> torch.Tensor:
        """(b, k·B, n + k·B) bool attention mask of the head, built on `device` (tens of MB per
        step: building it on the host and copying it cost more than the GPU step itself)."""
        k = self.anchors.shape[1]
        return block_mask(self.anchors.to(device), self.ids.shape[1], self.block_ids.shape[1] // k)


def block_mask(anchors: torch.Tensor, n: int, block: int) -> torch.Tensor:
    """Row j·B + i (block j, slot i) sees context rows < anchors[:, j] and slots ≤ i of its own block."""
    b, k = anchors.shape
    dev = anchors.device
    ctx = torch.arange(n, device=dev)[None, None, :] < anchors.repeat_interleave(block, dim=1)[..., None]
    rb = torch.arange(k * block, device=dev)
    in_block = (rb[:, None] // block == rb[None, :] // block) & (rb[None, :] <= rb[:, None])
    return torch.cat([ctx, in_block.expand(b, -1, -1)], dim=2)


def kl_torch(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float,
             per_row: bool = False) -> torch.Tensor:
    """Σ over rows of T² · KL(softmax(t / T) ‖ softmax(s / T)) in PyTorch ops, or (per_row) the
    (R,) row values (`kernels.fused_kl` is the fused form)."""
    T = temperature
    if T != 1.0:   # divide in fp32: bf16 logits / T would round (the fused kernel scales in fp32 too)
        s_logits, t_logits = s_logits.float() / T, t_logits.float() / T
    # (Nv, V) is the step's largest tensor (~1.5 GB in bf16 for 32 sequences): upcast inside
    # log_softmax rather than by a separate .float() copy, and skip dividing by T = 1 — each full
    # pass over it, forward and backward, is milliseconds of memory traffic per step
    logq = F.log_softmax(s_logits, dim=-1, dtype=torch.float32)
    logp = F.log_softmax(t_logits, dim=-1, dtype=torch.float32)
    if per_row:
        return F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1) * T * T
    return F.kl_div(logq, logp, log_target=True, reduction="sum") * T * T


def _perm_index(k: int, n: int, seed: int, cache: dict) -> int:
    epoch = k // n
    if epoch not in cache:
        cache.clear()
        cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    return cache[epoch][k % n]


def make_batch(seqs: list[list[int]], plens: list[int], anchors: int, block: int, mask_id: int,
               gen: torch.Generator, max_len: int) -> Batch:
    """Pack sequences and `anchors` random anchors each (see the module docstring)."""
    b, k, B = len(seqs), anchors, block
    seqs = [s[:max_len] for s in seqs]
    n = max(len(s) for s in seqs)
    ids = torch.zeros(b, n, dtype=torch.long)
    A = torch.zeros(b, k, dtype=torch.long)
    ok = torch.zeros(b, k, dtype=torch.bool)
    lens = torch.tensor([len(s) for s in seqs])
    for i, (s, p) in enumerate(zip(seqs, plens)):
        ids[i, :len(s)] = torch.tensor(s)
        lo, hi = p - 1, len(s) - 2            # anchor a needs a label for depth 1: a + 1 <= len − 1
        if hi < lo:
            continue
        r = hi - lo + 1
        pick = torch.randperm(r, generator=gen)[:k] + lo
        A[i, :len(pick)] = pick
        ok[i, :len(pick)] = True
    depth = torch.arange(1, B)                                           # (B−1,)
    label_pos = A[..., None] + depth - 1                                 # (b, k, B−1)
    valid = ok[..., None] & (A[..., None] + depth <= (lens - 1)[:, None, None])
    label_pos = torch.where(valid, label_pos, torch.zeros_like(label_pos))
    blk = torch.full((b, k, B), mask_id, dtype=torch.long)
    blk[:, :, 0] = ids.gather(1, A)
    block_pos = (A[..., None] + torch.arange(B)).reshape(b, k * B)
    return Batch(ids, blk.reshape(b, k * B), block_pos, A, label_pos, valid)


class Trainer:
    """Holds the teacher, the heads and their optimizers; `run` trains, `evaluate` measures."""

    def __init__(self, hf, data: DistillData, cfg: TrainConfig, mask_token_id: int, out_dir: str | Path,
                 progress: bool = True, rank: int = 0, world: int = 1):
        """rank / world: data parallelism over `world` processes (torch.distributed must be set up):
        every process builds the step's whole batch, trains on its share of the sequences, and the
        summed gradients make the step equal to one process's (up to summation order). Rank 0 alone
        evaluates, logs, checkpoints and decides when to stop."""
        self.hf, self.data, self.cfg = hf, data, cfg
        self.rank, self.world = rank, world
        self.progress = progress and rank == 0
        self.out = Path(out_dir)
        self.device = next(hf.parameters()).device
        self.embed = hf.get_input_embeddings().weight
        self.lm_head = hf.get_output_embeddings().weight
        from ..model import ModelShape

        self.shape = shape = ModelShape.from_hf_config(hf.config)
        self.train_idx, self.hold_idx = data.split(cfg.holdout, cfg.seed)
        if not self.train_idx:
            raise JetSpecError("no training sequences left after the held-out split")
        self.heads: dict[int, DraftHead] = {}
        self.opts: dict[int, torch.optim.Optimizer] = {}
        for L in cfg.layers:
            hc = HeadConfig.for_target(shape, mask_token_id, num_layers=L, num_taps=cfg.num_taps,
                                       block_size=cfg.block_size)
            torch.manual_seed(cfg.seed * 1000 + L)
            head = DraftHead(hc).to(self.device).train()
            self.heads[L] = head
            self.opts[L] = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=(0.9, 0.95),
                                             weight_decay=cfg.weight_decay,
                                             **({"fused": True} if self.device.type == "cuda" else {}))
        self.taps = list(next(iter(self.heads.values())).config.target_layer_ids)
        self.mask_id = mask_token_id
        self._kl_rows = None
        self.kl_kernel = self._pick_kl_kernel(cfg.kl_kernel)
        self.step = 0
        self.total_steps = cfg.steps
        self.log: list[dict] = []
        self.evals: list[dict] = []
        self._perm_cache: dict = {}
        self.timing: dict[str, float] = {}   # seconds per phase, summed over steps (cfg.profile)

    def _pick_kl_kernel(self, asked: str) -> str:
        """The KL form this run uses: "triton" (sets the fused kernel) or "torch"; "auto" takes the
        kernel on a CUDA device when triton imports, else the PyTorch ops."""
        if asked == "torch" or (asked == "auto" and self.device.type != "cuda"):
            return "torch"
        try:
            from ..kernels import fused_kl
        except ImportError as e:
            missing = f"triton ({e})"
        else:
            if fused_kl.usable(self.device):
                self._kl_rows = fused_kl.kl_rows
                return "triton"
            missing = f"a CUDA device (training runs on {self.device})"
        if asked == "auto":
            return "torch"
        raise JetSpecError(f"--kl-kernel triton needs {missing}")

    # -- one step -------------------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def _batch_for(self, indices: list[int], gen: torch.Generator, anchors: int) -> Batch:
        d = self.data
        return make_batch([d.seqs[i] for i in indices], [d.prompt_lens[i] for i in indices], anchors,
                          self.cfg.block_size, self.mask_id, gen, self.cfg.max_len)

    def batch_at(self, step: int) -> Batch:
        c = self.cfg
        n = len(self.train_idx)
        idx = [self.train_idx[_perm_index(step * c.batch_size + j, n, c.seed, self._perm_cache)]
               for j in range(c.batch_size)]
        gen = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
        return self._batch_for(idx, gen, c.anchors)

    def _teacher(self, bt: Batch):
        dev = self.device
        # make_batch pads on the right and no label or context row is a pad: no padding mask needed
        taps, fin = teacher_forward(self.hf, bt.ids.to(dev), None, self.taps)
        valid = bt.valid.to(dev)
        rows = fin.gather(1, bt.label_pos.to(dev).flatten(1)[..., None].expand(-1, -1, fin.shape[-1]))
        rows = rows.view(*bt.label_pos.shape, -1)[valid]                           # (Nv, H)
        t_logits = F.linear(rows, self.lm_head)                  # (Nv, V), bf16 on a GPU: _kl upcasts
        return taps, t_logits, valid

    def _student(self, head: DraftHead, bt: Batch, taps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        dev = self.device
        b, kB = bt.block_ids.shape
        B = self.cfg.block_size
        with self._autocast():
            ctx = head.fuse(taps)                                                  # (b, n, H)
            block = F.embedding(bt.block_ids.to(dev), self.embed)                  # (b, k·B, H)
            ctx_pos = torch.arange(ctx.shape[1], device=dev).expand(b, -1)
            out = head(block.to(ctx.dtype), bt.block_pos.to(dev), ctx, ctx_pos, bt.mask_on(dev))
            out = out.view(b, kB // B, B, -1)[:, :, 1:][valid]                      # (Nv, H)
            logits = F.linear(out, self.lm_head)
        return logits                                            # bf16 on a GPU: _kl upcasts

    def _kl(self, s_logits: torch.Tensor, t_logits: torch.Tensor, rows: float | None = None,
            weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean forward KL over the labelled rows, each weighing `weights` (default 1), divided by
        `rows` (default: the given rows' total weight; data-parallel ranks pass the whole batch's so
        that their sums add up to the batch's weighted mean)."""
        T = self.cfg.kl_temperature
        if rows is None:
            rows = s_logits.shape[0] if weights is None else float(weights.sum())
        if self._kl_rows is not None:                    # fused: loss and gradient in two passes
            per_row = self._kl_rows(s_logits, t_logits, T)
            total = per_row.sum() if weights is None else (per_row * weights).sum()
        elif weights is None:
            total = kl_torch(s_logits, t_logits, T)
        else:
            total = (kl_torch(s_logits, t_logits, T, per_row=True) * weights).sum()
        return total / max(1e-9, rows)

    def _row_weights(self, valid: torch.Tensor) -> torch.Tensor | None:
        """(Nv,) the depth weight of each labelled row of `valid` (b, k, B−1), or None if uniform."""
        if self.cfg.depth_decay <= 0:
            return None
        w = self.cfg.depth_weights().to(valid.device)
        return w.expand(valid.shape)[valid]

    def _share(self, bt: Batch) -> tuple[Batch, float]:
        """This rank's sequences of the step's batch (every world-th), and the batch's labelled rows
        (their total depth weight)."""
        w = self._row_weights(bt.valid)
        rows = int(bt.valid.sum()) if w is None else float(w.sum())
        if self.world == 1:
            return bt, rows
        part = slice(self.rank, None, self.world)
        return Batch(**{f.name: getattr(bt, f.name)[part] for f in fields(Batch)}), rows

    def _sum_over_ranks(self, tensors: list[torch.Tensor]) -> None:
        """In place: every tensor becomes its sum over the ranks (one flat all-reduce)."""
        import torch.distributed as dist

        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        dist.all_reduce(flat)
        i = 0
        for t in tensors:
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()

    def _agree(self, stop: bool) -> bool:
        """Rank 0's stop decision and schedule length, for every rank (a no-op on one process)."""
        if self.world == 1:
            return stop
        import torch.distributed as dist

        t = torch.tensor([int(stop), self.total_steps], device=self.device)
        dist.broadcast(t, 0)
        self.total_steps = int(t[1])
        return bool(t[0])

    def _mark(self, phase: str, since: float) -> float:
        """With cfg.profile: wait for the device, add the time since `since` to `phase`; returns now."""
        if not self.cfg.profile:
            return since
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timing[phase] = self.timing.get(phase, 0.0) + now - since
        return now

    def train_step(self, bt: Batch | None = None) -> dict[int, float]:
        """One optimizer step of every head on `bt` (default: this step's batch, `batch_at(step)`)."""
        t = time.perf_counter()
        bt, rows = self._share(self.batch_at(self.step) if bt is None else bt)
        taps, t_logits, valid = self._teacher(bt)
        weights = self._row_weights(valid)                # the same for every head
        t = self._mark("teacher", t)
        losses = {}
        for L, head in self.heads.items():
            opt = self.opts[L]
            for g in opt.param_groups:
                g["lr"] = self.cfg.lr_at(self.step, self.total_steps)
            loss = self._kl(self._student(head, bt, taps, valid), t_logits, rows, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            t = self._mark(f"student_L{L}", t)
            loss = loss.detach().reshape(1)
            if self.world > 1:
                for p in head.parameters():
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                self._sum_over_ranks([p.grad for p in head.parameters()] + [loss])
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(head.parameters(), self.cfg.grad_clip)
            opt.step()
            losses[L] = float(loss)
            t = self._mark("update", t)
        self.step += 1
        return losses

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, max_sequences: int | None = None) -> dict:
        """Held-out top-1 agreement per depth (head argmax == target argmax at a+d−1), KL, and the
        chain acceptance estimate 1 + E[Σ_d Π_{d'≤d} agree] over anchors with all depths inside."""
        c, B = self.cfg, self.cfg.block_size
        idx = self.hold_idx[:max_sequences] if max_sequences else self.hold_idx
        res = {}
        for head in self.heads.values():
            head.eval()
        stats = {L: {"agree": torch.zeros(B - 1), "count": torch.zeros(B - 1), "kl": 0.0, "rows": 0,
                     "chain": 0.0, "full": 0} for L in self.heads}
        gen = torch.Generator().manual_seed(c.seed + 424242)
        for j in range(0, len(idx), c.batch_size):
            bt = self._batch_for(idx[j:j + c.batch_size], gen, c.eval_anchors)
            taps, t_logits, valid = self._teacher(bt)
            t_top = t_logits.argmax(-1)
            full = valid.all(-1)                                                   # (b, k)
            for L, head in self.heads.items():
                s = self._student(head, bt, taps, valid)
                st = stats[L]
                st["kl"] += float(self._kl(s, t_logits)) * s.shape[0]
                st["rows"] += s.shape[0]
                agree = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)
                agree[valid] = (s.argmax(-1) == t_top).float()
                st["agree"] += agree.sum((0, 1)).cpu()
                st["count"] += valid.sum((0, 1)).float().cpu()
                st["chain"] += float(agree[full].cumprod(-1).sum())
                st["full"] += int(full.sum())
        for L, st in stats.items():
            per_depth = (st["agree"] / st["count"].clamp(min=1)).tolist()
            res[L] = {"top1_per_depth": [round(x, 4) for x in per_depth],
                      "kl": st["kl"] / max(1, st["rows"]),
                      "chain_tau_estimate": 1 + st["chain"] / max(1, st["full"]),
                      "anchors": st["full"]}
        for head in self.heads.values():
            head.train()
        return res

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "checkpoint.pt"
        state = {"step": self.step, "total_steps": self.total_steps, "config": json.dumps(asdict(self.cfg)),
                 "heads": {str(L): h.state_dict() for L, h in self.heads.items()},
                 "opts": {str(L): o.state_dict() for L, o in self.opts.items()},
                 "log": json.dumps(self.log), "evals": json.dumps(self.evals)}
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        return path

    def load_checkpoint(self) -> bool:
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise JetSpecError(f"checkpoint {path} is unreadable ({type(e).__name__}); delete it to start over") from e
        saved = json.loads(state["config"])
        if tuple(saved["layers"]) != self.cfg.layers or saved["block_size"] != self.cfg.block_size \
                or saved["num_taps"] != self.cfg.num_taps:
            raise JetSpecError(f"checkpoint {path} is for layers {saved['layers']}, block {saved['block_size']}, "
                               f"{saved['num_taps']} taps; pass the same settings or another --out")
        for L, h in self.heads.items():
            h.load_state_dict(state["heads"][str(L)])
            self.opts[L].load_state_dict(state["opts"][str(L)])
        self.step, self.total_steps = int(state["step"]), int(state["total_steps"])
        if self.step >= self.total_steps and self.cfg.steps > self.step:
            self.total_steps = self.cfg.steps  # a finished run given more --steps: continue (LR restarts)
        self.log, self.evals = json.loads(state["log"]), json.loads(state["evals"])
        return True

    def init_from(self, folder: str | Path) -> None:
        """Warm start: every head takes the weights of the published head in `folder`, which must
        fit the target and have the same taps, block size and mask token. A head with more draft
        layers than `folder`'s grows: it takes the published layers as its first ones, and its
        extra layers start with zero o_proj / down_proj, so they pass the residual stream through
        unchanged and the grown head drafts exactly as the published one until training moves them."""
        src = DraftHead.load(folder, device=self.device, dtype=torch.float32)
        src.config.check_fits(self.shape)
        for L, h in self.heads.items():
            mine, theirs = h.config, src.config
            if theirs.num_hidden_layers > mine.num_hidden_layers or \
                    (list(theirs.target_layer_ids), theirs.block_size, theirs.mask_token_id) != \
                    (list(mine.target_layer_ids), mine.block_size, mine.mask_token_id):
                raise JetSpecError(
                    f"--init-from {folder}: that head has {theirs.num_hidden_layers} layers, taps "
                    f"{theirs.target_layer_ids}, block {theirs.block_size}, mask {theirs.mask_token_id}; this run "
                    f"trains {L} layers, taps {mine.target_layer_ids}, block {mine.block_size}, mask "
                    f"{mine.mask_token_id} (a head may grow to more layers, never shrink)")
            unexpected = h.load_state_dict(src.state_dict(), strict=False).unexpected_keys  # a grown head misses keys
            assert not unexpected, unexpected
            with torch.no_grad():
                for layer in h.layers[theirs.num_hidden_layers:]:
                    layer.o_proj.weight.zero_()
                    layer.down_proj.weight.zero_()

    def export(self) -> dict[int, Path]:
        """Write each head as a published-format folder out/L{n}/."""
        paths = {}
        for L, h in self.heads.items():
            p = self.out / f"L{L}"
            h.save(p)
            paths[L] = p
        return paths

    # -- the loop -------------------------------------------------------------------------------
    def _replan(self, t0: float, steps_done_here: int) -> None:
        c = self.cfg
        if c.time_limit_s is None or steps_done_here < 10:
            return
        per_step = (time.perf_counter() - t0) / steps_done_here
        left = c.time_limit_s - c.reserve_s - (time.perf_counter() - t0)
        self.total_steps = max(self.step + 1, min(c.steps, self.step + int(left / per_step)))

    def run(self) -> dict:
        """Train until total_steps (or the time limit), checkpointing; returns the final report."""
        from tqdm.auto import tqdm

        c = self.cfg
        t0 = last_ckpt = time.perf_counter()
        done_here, start = 0, self.step   # replanning looks at this session's part of the schedule
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not self.progress)
        # the next step's batch is built on the host while this step runs on the device (batch_at
        # depends on the step number only, so prefetching changes nothing of the result)
        pool = ThreadPoolExecutor(max_workers=1)
        ahead = pool.submit(self.batch_at, self.step)
        while True:
            elapsed = time.perf_counter() - t0
            out_of_time = c.time_limit_s is not None and elapsed > c.time_limit_s - c.reserve_s
            if self._agree(out_of_time or self.step >= self.total_steps):  # every rank stops together
                if out_of_time and self.step < self.total_steps and self.rank == 0:
                    bar.write(f"[train] time limit: stopping at step {self.step} of {self.total_steps}")
                break
            t_wait = time.perf_counter()
            bt = ahead.result()
            self._mark("batch_wait", t_wait)
            ahead = pool.submit(self.batch_at, self.step + 1)
            losses = self.train_step(bt)
            done_here += 1
            if self.step % c.log_every == 0 or self.step == 1:
                self.log.append({"step": self.step, "t": round(elapsed, 1),
                                 "lr": self.cfg.lr_at(self.step - 1, self.total_steps),
                                 **{f"loss_L{L}": round(v, 4) for L, v in losses.items()}})
            if self.rank == 0 and (done_here in (10, 25) or (
                    done_here % 50 == 0 and self.step - start < 0.6 * (self.total_steps - start))):
                self._replan(t0, done_here)
                bar.total = self.total_steps
            if c.eval_every and self.step % c.eval_every == 0 and self.hold_idx and self.rank == 0:
                ev = self.evaluate(max_sequences=64)
                self.evals.append({"step": self.step, **{f"L{L}": v for L, v in ev.items()}})
            if time.perf_counter() - last_ckpt > c.ckpt_every_s and self.rank == 0:
                self.save_checkpoint()
                last_ckpt = time.perf_counter()
            bar.update(1)
            bar.set_postfix({f"L{L}": f"{v:.3f}" for L, v in losses.items()})
        loop_seconds = time.perf_counter() - t0
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
        if self.rank != 0:
            return {"step": self.step, "rank": self.rank}
        self.save_checkpoint()
        final = self.evaluate() if self.hold_idx else {}
        profile = {"profile_s": {k: round(v, 4) for k, v in self.timing.items()}, "profiled_steps": done_here} \
            if c.profile else {}
        return {**profile, "step": self.step, "total_steps": self.total_steps,
                "train_seconds": round(time.perf_counter() - t0, 1), "steps_here": done_here,
                "seconds_per_step": round(loop_seconds / max(1, done_here), 4), "kl_kernel": self.kl_kernel,
                "heldout": {f"L{L}": v for L, v in final.items()}, "log": self.log, "evals": self.evals,
                "train_sequences": len(self.train_idx), "heldout_sequences": len(self.hold_idx)}


def pick_best(report: dict) -> int | None:
    """The layer count whose head has the highest held-out chain acceptance estimate."""
    held = report.get("heldout") or {}
    if not held:
        return None
    return int(max(held, key=lambda k: held[k]["chain_tau_estimate"])[1:])


def write_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=1) + "\n")

