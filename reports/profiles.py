"""The committed profile reports (`python -m bench profile`, reports/profile-*.md), found by the engine they profile.

A profile names its engine as the engine registry does, options sorted
(`decoder/inductor/fp16/graph+channels_last=True,groupnorm=split`); a benchmark as bench.matrix does
(`decoder-inductor-fp16-graph-groupnorm=split-channels_last=True`).
Both become one key, so that the speed-up report can point each target at the profile that shows where its time goes.
"""

from __future__ import annotations

import re
from pathlib import Path

Key = tuple[str, str, str, bool, frozenset]


def engine_key(engine: str) -> Key:
    """`clip/inductor/fp16/graph+attention=triton,qkv=stacked` -> its key."""
    head, _, opts = engine.partition("+")
    component, backend, precision, *graph = head.split("/")
    return component, backend, precision, graph == ["graph"], frozenset(o for o in opts.split(",") if o)


def spec_key(spec_id: str) -> Key:
    """`clip-inductor-fp16-graph-qkv=stacked-attention=triton` -> its key. Option values may hold dashes
    (mode=max-autotune-no-cudagraphs): a part without '=' continues the option before it."""
    component, backend, precision, *rest = spec_id.split("-")
    graph = rest[:1] == ["graph"]
    opts: list[str] = []
    for part in rest[graph:]:
        if "=" in part or not opts:
            opts.append(part)
        else:
            opts[-1] += "-" + part
    return component, backend, precision, graph, frozenset(opts)


def index(folder: Path) -> dict[Key, str]:
    """Profile file name by engine key; of two profiles of one engine, the later date wins."""
    found: dict[Key, tuple[str, str]] = {}
    for path in sorted(Path(folder).glob("profile-*.md")):
        text = path.read_text()
        engine = re.search(r"^\| engine\s*\| (\S+)\s*\|", text, re.M)
        date = re.search(r"^\| date\s*\| ([^|]+?)\s*\|", text, re.M)
        if engine is None:
            continue
        key, stamp = engine_key(engine.group(1)), date.group(1) if date else ""
        if key not in found or stamp > found[key][0]:
            found[key] = (stamp, path.name)
    return {k: name for k, (_, name) in found.items()}
