"""The command-line tests run `python -m bench` (or `reports`, or `pytest`) in a fresh folder: the subprocess finds
this checkout's packages whether or not it was pip-installed (the GPU machine runs a copy of the tree as it is), and
is no pytest-xdist worker when these tests run under `-n` (pytest-benchmark would then time nothing and write no
JSON)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _this_checkout_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for name in [n for n in os.environ if n.startswith("PYTEST_XDIST")]:
        monkeypatch.delenv(name)
