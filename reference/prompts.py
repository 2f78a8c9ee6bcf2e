"""The (prompt, seed) pairs of the original evaluation, read from ../shared/prompts.tsv (never copied)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The shared folder sits beside a developer's checkout; a device run carries a copy inside the checkout.
CANDIDATES = (ROOT / "shared" / "prompts.tsv", ROOT.parent / "shared" / "prompts.tsv")


@dataclass(frozen=True)
class Prompt:
    index: int
    seed: int
    prompt: str


def default_prompts_path() -> Path:
    for path in CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError(f"prompts.tsv not found at {[str(p) for p in CANDIDATES]}; pass its path explicitly")


def read_prompts(path: Path) -> list[Prompt]:
    """Rows of `index<TAB>seed<TAB>prompt` under that header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0] != ["index", "seed", "prompt"]:
        raise ValueError(f"{path}: expected the header 'index<TAB>seed<TAB>prompt', found {rows[:1]}")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 3 or not row[0].isdigit() or not row[1].isdigit():
            raise ValueError(
                f"{path}:{line}: expected 'index<TAB>seed<TAB>prompt' with integer index and seed, got {row}"
            )
        out.append(Prompt(int(row[0]), int(row[1]), row[2]))
    return out
