"""Captured steps: a zero-argument function replayed from one CUDA graph, or run eagerly.

The engine's phases (draft, tree, verify, accept; the plain step) read their inputs from and
leave their outputs in attributes of the engine state, so the same function runs eagerly on a
CPU (and in tests) and is captured once per shape on a GPU. Each graph gets a private memory
pool: a graph's temporaries never alias another graph's outputs. Warm-up runs happen on a side
stream before capture (lazy cuBLAS/Triton initialisation); `reset` puts the state into a safe
shape first, since warm-up really executes (it writes the caches).
"""
from __future__ import annotations

import traceback
import warnings
from typing import Callable

import torch


def _first_sync(fn: Callable[[], None]) -> str | None:
    """Run fn once with CUDA sync debugging set to 'error'; describe the first synchronising
    op (where in our code it happened), or None when fn never waits for the device."""
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "jetspec_core" in f.filename]
        where = f" at {frames[-1].filename.split('jetspec_core')[-1]}:{frames[-1].lineno} ({frames[-1].line})" \
            if frames else ""
        return f"{str(e).splitlines()[0][:200]}{where}"
    finally:
        torch.cuda.set_sync_debug_mode(before)
    return None


class Step:
    """`fn` captured into a CUDA graph when `graph` is True, else called as is."""

    def __init__(self, fn: Callable[[], None], name: str, graph: bool, reset: Callable[[], None] | None = None,
                 warmup: int = 2):
        self.fn, self.name = fn, name
        self.graph: torch.cuda.CUDAGraph | None = None
        self.error: str | None = None
        if not graph:
            return
        dev_stream = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(dev_stream)
        with torch.cuda.stream(side):
            for i in range(warmup):
                if reset:
                    reset()
                if i == 0:
                    self.error = _first_sync(fn)
                    if self.error:  # a host sync cannot be captured: stay eager, capture nothing
                        warnings.warn(f"step {name} syncs with the host, running it eagerly: {self.error}")
                        torch.cuda.synchronize()
                        return
                else:
                    fn()
        dev_stream.wait_stream(side)
        if reset:
            reset()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g):
                fn()
            torch.cuda.synchronize()
        except RuntimeError as e:  # an op that cannot be captured: run this step eagerly
            self.error = f"{type(e).__name__}: {str(e)[:300]}"
            warnings.warn(f"CUDA graph capture of step {name} failed, running it eagerly: {self.error}")
            if reset:
                reset()
            fn()  # leave valid outputs in the state
            torch.cuda.synchronize()
            return
        self.graph = g

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.fn()


class Clock:
    """Marks at phase boundaries: CUDA events on a GPU (read after the round's one sync),
    wall-clock stamps on a CPU (where every phase runs synchronously)."""

    def __init__(self, device: torch.device, n_marks: int = 5):
        self.cuda = device.type == "cuda"
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(n_marks)] if self.cuda else None
        self.stamps = [0.0] * n_marks
        self.used: list[int] = []

    def reset(self) -> None:
        self.used = []

    def mark(self, i: int) -> None:
        self.used.append(i)
        if self.cuda:
            self.events[i].record()
        else:
            import time
            self.stamps[i] = time.perf_counter()

    def seconds(self, a: int, b: int) -> float:
        if a not in self.used or b not in self.used:
            return 0.0
        if self.cuda:
            return self.events[a].elapsed_time(self.events[b]) / 1e3
        return self.stamps[b] - self.stamps[a]
