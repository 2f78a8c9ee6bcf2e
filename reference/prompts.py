"""The (prompt, seed) pairs of the original evaluation, shipped as reference/data/prompts.tsv, or any file like it."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

PROMPTS = Path(__file__).resolve().parent / "data" / "prompts.tsv"
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed on every device


@dataclass(frozen=True)
class Prompt:
    index: int
    seed: int
    prompt: str


def default_prompts_path() -> Path:
    return PROMPTS


def check_seed(seed: int, *, where: str = "--seed") -> int:
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{where}: seed {seed} is outside 0..2**63-1, the seeds torch's generators take")
    return seed


def read_prompts(path: Path) -> list[Prompt]:
    """Rows of `index<TAB>seed<TAB>prompt` under that header; an (index, seed) pair names its image files, so a pair
    seen twice is refused rather than written twice over one image."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0] != ["index", "seed", "prompt"]:
        raise ValueError(f"{path}: expected the header 'index<TAB>seed<TAB>prompt', found {rows[:1]}")
    out, first_seen = [], {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not row[0].isdigit() or not row[1].isdigit():
            raise ValueError(
                f"{path}:{line}: expected 'index<TAB>seed<TAB>prompt' with integer index and seed, got {row}"
            )
        p = Prompt(int(row[0]), check_seed(int(row[1]), where=f"{path}:{line}"), row[2])
        if (p.index, p.seed) in first_seen:
            raise ValueError(
                f"{path}:{line}: index {p.index} and seed {p.seed} repeat line {first_seen[p.index, p.seed]}; both "
                "would write the same image files: remove one row or give it another index"
            )
        first_seen[p.index, p.seed] = line
        out.append(p)
    return out
