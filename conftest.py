"""Command-line options and shared fixtures of every suite (`pytest reference`, `pytest bench`, the unit tests).

The engine matrix a run covers is what the machine supports unless options narrow it:
    CPU: tiny size, backends eager + inductor, fp32 + bf16, no CUDA graphs
    GPU: full size, backends eager + autocast + inductor (+ trt/trtllm, which skip when not installed),
         fp32 + fp16 + bf16, with and without CUDA graphs, and the decoder with and without the Triton GroupNorm.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from engines import ALIASES, PRECISIONS, backends, check_backend, unavailable
from engines.components import COMPONENTS
from reference.configs import SIZES, ModelConfig

AUTO = "auto"


@dataclass(frozen=True)
class EngineSpec:
    component: str
    backend: str
    precision: str
    cuda_graph: bool
    options: tuple[tuple[str, object], ...] = ()

    @property
    def id(self) -> str:  # uvit-inductor-fp16-graph
        parts = [self.component, self.backend, self.precision] + (["graph"] if self.cuda_graph else [])
        return "-".join(parts + [f"{k}={v}" for k, v in self.options])


@dataclass
class Matrix:
    device: torch.device
    size: str
    backends: list[str]
    precisions: list[str]
    graphs: list[bool]
    components: list[str] = field(default_factory=lambda: list(COMPONENTS))

    def specs(self) -> list[EngineSpec]:
        out = []
        for c in self.components:
            for b in self.backends:
                for p in self.precisions:
                    if b == "autocast" and (p == "fp32" or c != "uvit"):  # the seed's baseline: U-ViT only
                        continue
                    for g in self.graphs:
                        out.append(EngineSpec(c, b, p, g))
                        if c == "decoder" and self.device.type == "cuda" and p != "fp32" and b in ("eager", "inductor"):
                            out.append(EngineSpec(c, b, p, g, (("groupnorm", "triton"),)))
        return out


def _choices(kind: str, valid: list[str], *, aliases: dict[str, str] | None = None):
    """A `type=` for comma-separated choices (or 'auto'): bad values are rejected when the options are parsed."""
    accepted = set(valid) | set(aliases or {})

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if items == [AUTO]:
            return items
        bad = [i for i in items if i not in accepted]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {kind} {bad or text!r}; choose from {valid} or 'auto'")
        return [(aliases or {}).get(i, i) for i in items]

    return parse


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"weights folder {text!r} does not exist")
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("unidiffuser")
    g.addoption("--size", metavar="NAME", default=AUTO, type=_choices("size", [*SIZES]),
                help="model size: full on a GPU, tiny on a CPU. Default: %(default)r")  # fmt: skip
    g.addoption("--weights", metavar="DIR", default=None, type=_existing_dir,
                help="official checkpoints; seeded random weights without. Default: %(default)r")  # fmt: skip
    g.addoption("--weights-seed", metavar="N", default=0, type=int,
                help="seed of the random weights. Default: %(default)r")  # fmt: skip
    g.addoption("--device", metavar="DEV", default=AUTO, type=_choices("device", ["cpu", "cuda"]),
                help="cuda when available, else cpu. Default: %(default)r")  # fmt: skip
    g.addoption("--backends", metavar="LIST", default=AUTO, type=_choices("backend", backends(), aliases=ALIASES),
                help=f"comma-separated engines from {backends()}. Default: %(default)r")  # fmt: skip
    precisions = [p for p in PRECISIONS if p != "fp64"]
    g.addoption("--precisions", metavar="LIST", default=AUTO, type=_choices("precision", precisions),
                help="comma-separated fp32, fp16, bf16. Default: %(default)r")  # fmt: skip
    g.addoption("--cuda-graphs", metavar="MODE", default=AUTO, type=_choices("cuda-graph mode", ["off", "on", "both"]),
                help="off, on or both (both on a GPU, off on a CPU). Default: %(default)r")  # fmt: skip
    g.addoption("--results-dir", metavar="DIR", default="results", type=Path,
                help="where raw results (JSON) are written. Default: %(default)r")  # fmt: skip
    g.addoption("--accuracy-report", metavar="PATH", default=None, type=Path,
                help="also write the accuracy markdown report (and its PNG) here. Default: %(default)r")  # fmt: skip
    g.addoption("--overwrite-reports", action="store_true", default=False,
                help="allow --accuracy-report to replace an existing file. Default: %(default)r")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
    config.addinivalue_line("markers", "slow: takes minutes on a CPU")
    report = config.getoption("--accuracy-report")
    if report is not None and report.exists() and not config.getoption("--overwrite-reports"):
        raise pytest.UsageError(f"{report} exists; pass --overwrite-reports to replace it")


def _device(config: pytest.Config) -> torch.device:
    opt = config.getoption("--device")[0]
    if opt == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if opt == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda but torch sees no CUDA device")
    return torch.device(opt)


def matrix(config: pytest.Config) -> Matrix:
    device = _device(config)
    gpu = device.type == "cuda"
    pick = lambda opt, gpu_default, cpu_default: (  # noqa: E731
        (gpu_default if gpu else cpu_default) if config.getoption(opt) == [AUTO] else config.getoption(opt)
    )
    graphs = pick("--cuda-graphs", ["both"], ["off"])[0]
    return Matrix(
        device=device,
        size=pick("--size", ["full"], ["tiny"])[0],
        backends=[
            check_backend(b)
            for b in pick("--backends", ["eager", "autocast", "inductor", "trt", "trtllm"], ["eager", "inductor"])
        ],
        precisions=pick("--precisions", ["fp32", "fp16", "bf16"], ["fp32", "bf16"]),
        graphs={"off": [False], "on": [True], "both": [False, True]}[graphs],
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_spec" in metafunc.fixturenames:
        specs = matrix(metafunc.config).specs()
        metafunc.parametrize("engine_spec", specs, ids=[s.id for s in specs])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    device = _device(config)
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))
        spec = item.callspec.params.get("engine_spec") if hasattr(item, "callspec") else None
        if spec is not None:
            why = unavailable(spec.backend, device=device, precision=spec.precision, cuda_graph=spec.cuda_graph)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def run_matrix(pytestconfig: pytest.Config) -> Matrix:
    return matrix(pytestconfig)


@pytest.fixture(scope="session")
def device(run_matrix: Matrix) -> torch.device:
    return run_matrix.device


@pytest.fixture(scope="session")
def model_config(run_matrix: Matrix) -> ModelConfig:
    return ModelConfig.from_name(run_matrix.size)


@pytest.fixture(scope="session")
def models(pytestconfig: pytest.Config, model_config: ModelConfig, device: torch.device):
    from reference.checkpoints import load_models

    m = load_models(
        model_config, weights=pytestconfig.getoption("--weights"), seed=pytestconfig.getoption("--weights-seed")
    )
    return m.to(device)


@pytest.fixture(scope="session")
def env_info(models, run_matrix: Matrix) -> dict[str, str]:
    from bench.environment import environment

    return environment(weights=models.weights, size=run_matrix.size)


class ResultLog:
    """Rows that tests add, rewritten to one JSON file after every test: a run cut short still leaves its results."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path, self.env, self.rows = path, env, []

    def add(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"env": self.env, "rows": self.rows}, indent=1, default=float))


@pytest.fixture(scope="session")
def accuracy_log(pytestconfig: pytest.Config, env_info: dict[str, str]):
    stamp = env_info["date"].replace(" ", "_").replace(":", "")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    path = pytestconfig.getoption("--results-dir") / f"accuracy-{stamp}{'-' + worker if worker else ''}.json"
    log = ResultLog(path, env_info)
    yield log
    report = pytestconfig.getoption("--accuracy-report")
    if log.rows and report is not None:
        from reports.accuracy import write_report

        write_report([log.path], report, overwrite=pytestconfig.getoption("--overwrite-reports"))
