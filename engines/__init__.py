"""Engines: a component built by a backend at a precision, with or without a CUDA graph, optionally with marks.

    engine = build_engine("uvit", models, backend="inductor", precision="fp16", cuda_graph=True)
    outputs = engine(**inputs)          # {mark: tensor, ..., "output": tensor}, marks in execution order

What an engine is lives in engines.spec and the named recipes in engines.recipes, neither importing torch; building
one (engines.registry, the backend modules) loads torch on first use, so that the reports can read ids and recipes
without it.
"""

from __future__ import annotations

import importlib

from engines.spec import ALIASES, BACKENDS, COMPONENTS, PRECISIONS, EngineSpec, SpecError

_BUILD = ("ENGINES", "LIMITS", "BackendUnavailable", "Engine", "build_engine", "check_backend",
          "register_engine", "register_limits", "require", "unavailable", "backends", "check_supported")  # fmt: skip


def __getattr__(name: str) -> object:
    if name in _BUILD:
        return getattr(importlib.import_module("engines.registry"), name)
    raise AttributeError(f"module 'engines' has no attribute {name!r}")


__all__ = ["ALIASES", "BACKENDS", "COMPONENTS", "PRECISIONS", "EngineSpec", "SpecError", *_BUILD]
