"""The committed profile reports (`python -m bench profile`, reports/profile-*.md), found by the engine they profile,
so that the speed-up report can point each target at the profile that shows where its time goes. Engine ids are read
by engines.spec, the one parser of them."""

from __future__ import annotations

import re
from pathlib import Path

from engines.spec import EngineSpec, SpecError


def engine_id(text: str) -> str | None:
    """The canonical id of the engine `text` names, or None where it names none (a recipe, an engine of a retired
    option)."""
    try:
        return EngineSpec.parse(text).id
    except SpecError:
        return None


def index(folder: Path) -> dict[str, str]:
    """Profile file name by engine id; of two profiles of one engine, the later date wins."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(Path(folder).glob("profile-*.md")):
        text = path.read_text()
        engine = re.search(r"^\| engine\s*\| (\S+)\s*\|", text, re.M)
        date = re.search(r"^\| date\s*\| ([^|]+?)\s*\|", text, re.M)
        key = engine_id(engine.group(1)) if engine else None
        if key is None:
            continue
        stamp = date.group(1) if date else ""
        if key not in found or stamp > found[key][0]:
            found[key] = (stamp, path.name)
    return {k: name for k, (_, name) in found.items()}
