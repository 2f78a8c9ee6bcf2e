"""Command-line options and shared fixtures of every suite (`pytest reference`, `pytest bench`, the unit tests).

The engine matrix a run covers is what the machine supports unless options narrow it:
    CPU: tiny size, backends eager + inductor + onnxruntime, fp32 + bf16, no CUDA graphs
    GPU: full size, backends eager + autocast + inductor + onnxruntime (+ trt/trtllm, which skip when not installed),
         fp32 + fp16 + bf16, with and without CUDA graphs, fp16/bf16 engines also with fused attention (SDPA), and
         the decoder also channels_last with the Triton GroupNorm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from bench.matrix import AUTO, Matrix, device_from_config, matrix
from engines import ALIASES, PRECISIONS, backends, unavailable
from reference.configs import SIZES, ModelConfig
from reference.dpm_solver import STEPS
from reference.init import INITS


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


def _counts(kind: str):
    """A `type=` for comma-separated whole numbers of at least 1, each kept once, in the order given."""

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items or not all(t.isdigit() and int(t) >= 1 for t in items):
            raise argparse.ArgumentTypeError(f"expected {kind} of at least 1, comma-separated, got {text!r}")
        return list(dict.fromkeys(int(t) for t in items))

    return parse


def _engine_id(text: str):
    from engines.spec import EngineSpec, SpecError

    try:
        return EngineSpec.parse(text)
    except SpecError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _recipes(text: str) -> list[str]:
    from engines.recipes import LADDER

    names = [r.name for r in LADDER]
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [i for i in items if i not in names]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown recipe {bad or text!r}; choose from {names}")
    return items


def _fault(text: str):
    """KIND@MARK (engines/faults.py), MARK a mark name or a component for the component itself: the fault and the
    component whose engines take it."""
    from engines.faults import Fault
    from engines.spec import COMPONENTS

    kind, at, mark = text.partition("@")
    component = mark.split(".")[0]
    if not at or component not in COMPONENTS:
        raise argparse.ArgumentTypeError(f"expected KIND@MARK with MARK a mark of {'/'.join(COMPONENTS)} (e.g. "
                                         f"heads@uvit.mid_block.attn, guidance0@uvit), got {text!r}")  # fmt: skip
    try:
        return component, Fault(kind, "" if mark == component else mark)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    g.addoption("--memory-budget", metavar="GIB", default=None, type=float,
                help="refuse a run estimated (bench/memory.py) to need more GiB than this. Default: what the device "
                     "has free")  # fmt: skip
    g.addoption("--weights-seed", metavar="N", default=0, type=int,
                help="seed of the random weights. Default: %(default)r")  # fmt: skip
    g.addoption("--init", metavar="NAME", default=INITS[0], choices=INITS,
                help=f"initialisation of the random weights, {' or '.join(INITS)} (reference/init.py). "
                     "Default: %(default)r")  # fmt: skip
    g.addoption("--device", metavar="DEV", default=AUTO, type=_choices("device", ["cpu", "cuda"]),
                help="cuda when available, else cpu. Default: %(default)r")  # fmt: skip
    g.addoption("--backends", metavar="LIST", default=AUTO, type=_choices("backend", backends(), aliases=ALIASES),
                help=f"comma-separated engines from {backends()}. Default: %(default)r")  # fmt: skip
    precisions = [p for p in PRECISIONS if p != "fp64"]
    g.addoption("--precisions", metavar="LIST", default=AUTO, type=_choices("precision", precisions),
                help="comma-separated fp32, fp16, bf16, fp8 (U-ViT only). Default: %(default)r")  # fmt: skip
    g.addoption("--cuda-graphs", metavar="MODE", default=AUTO, type=_choices("cuda-graph mode", ["off", "on", "both"]),
                help="off, on or both (both on a GPU, off on a CPU). Default: %(default)r")  # fmt: skip
    g.addoption("--engine-set", metavar="SET", default="matrix", choices=["matrix", "ladder"],
                help="the accuracy suite's engines: the matrix of --backends x --precisions x --cuda-graphs, or "
                     "every engine of the speed-up table's columns and recipes (engines/recipes.py). "
                     "Default: %(default)r")  # fmt: skip
    g.addoption("--fault", metavar="KIND@MARK", default=None, type=_fault,
                help="the accuracy suite on a broken engine, to see it fail: every engine of MARK's component is built "
                     "with this fault injected (engines/faults.py), e.g. heads@uvit.mid_block.attn; the suite must "
                     "fail and name the mark after it; results and report say which fault. Default: none")  # fmt: skip
    g.addoption("--results-dir", metavar="DIR", default="results", type=Path,
                help="where raw results (JSON) are written. Default: %(default)r")  # fmt: skip
    g.addoption("--accuracy-report", metavar="PATH", default=None, type=Path,
                help="also write the accuracy markdown report (and its PNG) here. Default: %(default)r")  # fmt: skip
    g.addoption("--overwrite-reports", action="store_true", default=False,
                help="allow --accuracy-report to replace an existing file. Default: %(default)r")  # fmt: skip
    g.addoption("--bench-set", metavar="SET", default="all", choices=["all", "ladder", "matrix", "none"],
                help="component benchmarks: the speed-up table's columns (ladder), the engine matrix, all, or none "
                     "(only --bench-engine's). "
                     "Default: %(default)r")  # fmt: skip
    g.addoption("--bench-engine", metavar="ID", action="append", default=[], type=_engine_id,
                help="component benchmarks: also this engine, by its id (engines/spec.py), e.g. "
                     "'uvit/inductor/fp16/graph+attention=triton'; repeatable. Default: none")  # fmt: skip
    g.addoption("--bench-rounds", metavar="N", default=0, type=int,
                help="timed rounds (0: 20 per component and 3 images on a GPU, 2 and 1 on a CPU). "
                     "Default: %(default)r")  # fmt: skip
    g.addoption("--bench-warmup", metavar="N", default=-1, type=int,
                help="untimed rounds first (-1: 3 per component and 1 image on a GPU, 1 and 0 on a CPU). "
                     "Default: %(default)r")  # fmt: skip
    g.addoption("--bench-protocol", metavar="NAME", default="quick", choices=["quick", "seed"],
                help="pipeline images: quick (prompt 0 again and again) or seed (5 warm-up images, then the 40 "
                     "prompts.tsv pairs, as the original work). Default: %(default)r")  # fmt: skip
    g.addoption("--bench-steps", metavar="LIST", default=[STEPS], type=_counts("step counts"),
                help="pipeline benchmarks: DPM-Solver++ model calls per image, comma-separated (e.g. 20,25,50); each "
                     "count is a case of its own. Default: 50")  # fmt: skip
    g.addoption("--bench-recipes", metavar="LIST", default=None, type=_recipes,
                help="pipeline benchmarks: only these recipes, comma-separated (engines/recipes.py). "
                     "Default: all")  # fmt: skip
    g.addoption("--bench-batch", metavar="LIST", default=[1], type=_counts("batch sizes"),
                help="pipeline benchmarks: images per call, comma-separated (e.g. 1,2,4,8,16), each a case of its own "
                     "with engines built for it and its memory measured; above 1, the quick protocol over the first "
                     "prompts. Default: 1")  # fmt: skip
    g.addoption("--bench-limit", metavar="N", default=0, type=int,
                help="seed protocol: time only the first N pairs of prompts.tsv (0: all 40). "
                     "Default: %(default)r")  # fmt: skip
    g.addoption("--bench-xdist", action="store_true", default=False,
                help="measure in pytest-xdist workers (-n N), one GPU each, each writing <benchmark-json>-gwK.json "
                     "(pytest-benchmark refuses xdist by default: workers sharing a device disturb each other). "
                     "Default: %(default)r")  # fmt: skip
    g.addoption("--bench-images", metavar="DIR", default=Path("results/images"), type=Path,
                help="where the pipeline benchmarks save their images, a folder per recipe. "
                     "Default: %(default)r")  # fmt: skip


def _gpu_count() -> int:
    """GPUs on the machine, counted without initialising CUDA (which would fix CUDA_VISIBLE_DEVICES too early)."""
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and config.getoption("--bench-xdist") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        n = _gpu_count()
        if n:  # worker gwK sees only GPU K mod n
            os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker.removeprefix("gw")) % n)
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
    config.addinivalue_line("markers", "slow: takes minutes on a CPU")
    if config.getoption("--bench-protocol") == "seed" and config.getoption("--bench-batch") != [1]:
        raise pytest.UsageError("--bench-protocol seed times the 40 pairs one image at a time, as the original work; "
                                "--bench-batch above 1 runs with the quick protocol")  # fmt: skip
    report = config.getoption("--accuracy-report")
    if report is not None and report.exists() and not config.getoption("--overwrite-reports"):
        raise pytest.UsageError(f"{report} exists; pass --overwrite-reports to replace it")


def pytest_sessionstart(session: pytest.Session) -> None:
    """With --bench-xdist, undo pytest-benchmark's xdist switch-off in each worker and give it its own JSON file."""
    worker, config = os.environ.get("PYTEST_XDIST_WORKER"), session.config
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.json:
        return
    # pytest-benchmark < 5.3 hands over an open file (argparse.FileType), later versions a Path
    opened = hasattr(bs.json, "write")
    path = Path(bs.json.name if opened else bs.json)
    path.parent.mkdir(parents=True, exist_ok=True)  # pytest-benchmark does not create it
    if worker and config.getoption("--bench-xdist") and not bs.skip:
        bs.disabled, bs.xdist_warning = False, False
        mine = path.with_name(f"{path.stem}-{worker}.json")
        if opened:  # every worker opened (and emptied) the shared name: write elsewhere and drop it
            bs.json.close()
            path.unlink(missing_ok=True)
            bs.json = mine.open("wb")
        else:
            bs.json = mine


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_spec" in metafunc.fixturenames:
        if metafunc.config.getoption("--engine-set") == "ladder":
            from engines.recipes import engine_specs

            specs = [s for s in engine_specs() if s.backend in matrix(metafunc.config).backends]
        else:
            specs = matrix(metafunc.config).specs()
        metafunc.parametrize("engine_spec", specs, ids=[s.id for s in specs])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    device = device_from_config(config)
    for item in items:
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():  # the mark, not a case named gpu
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))
        spec = item.callspec.params.get("engine_spec") if hasattr(item, "callspec") else None
        if spec is not None:
            why = unavailable(spec.backend, device=device, precision=spec.precision, cuda_graph=spec.cuda_graph,
                              options=spec.flat())  # fmt: skip
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Before any model is built: refuse a run that will not fit (`pytest reference --size full` on a laptop is
    killed at its memory's end, printing nothing)."""
    judged = set()
    for item in session.items:
        if "references" in getattr(item, "fixturenames", ()):
            params = item.callspec.params if hasattr(item, "callspec") else {}
            spec = params.get("engine_spec")
            judged |= {spec.component} if spec is not None else {params.get("component")}
    if not judged or session.config.getoption("--collect-only"):
        return
    from bench.memory import GIB, check_fits, estimate

    judged = ("clip", "uvit", "decoder") if None in judged else tuple(sorted(judged))
    config, run = session.config, matrix(session.config)
    budget = config.getoption("--memory-budget")
    try:
        check_fits(
            estimate(ModelConfig.from_name(run.size), judged=judged), run.device,
            what=f"the accuracy suite at size {run.size!r} judging {', '.join(judged)}",
            budget=None if budget is None else int(budget * GIB),
            fix="use --size tiny, a GPU, fewer components (-k decoder), or --memory-budget GIB to run anyway",
        )  # fmt: skip
    except MemoryError as e:
        raise pytest.UsageError(str(e)) from None


@pytest.fixture(scope="session")
def run_matrix(pytestconfig: pytest.Config) -> Matrix:
    return matrix(pytestconfig)


@pytest.fixture(scope="session")
def device(run_matrix: Matrix) -> torch.device:
    return run_matrix.device


@pytest.fixture(scope="session")
def kernel_device() -> str:
    """Where our Triton kernels run: the GPU, or the CPU under Triton's interpreter (plugin.tests)."""
    from plugin.tests import INTERPRETING, ON_GPU

    if not (ON_GPU or INTERPRETING):
        pytest.skip("the kernel needs a CUDA GPU or TRITON_INTERPRET=1 (see test_kernels_through_the_interpreter)")
    return "cuda" if ON_GPU else "cpu"


@pytest.fixture(scope="session")
def model_config(run_matrix: Matrix) -> ModelConfig:
    return ModelConfig.from_name(run_matrix.size)


@pytest.fixture(scope="session")
def models(pytestconfig: pytest.Config, model_config: ModelConfig, device: torch.device):
    from reference.checkpoints import load_models

    m = load_models(
        model_config, weights=pytestconfig.getoption("--weights"), seed=pytestconfig.getoption("--weights-seed"),
        init=pytestconfig.getoption("--init"),
    )  # fmt: skip
    return m.to(device)


def weights_label(config: pytest.Config) -> str:
    from reference.checkpoints import random_label

    weights = config.getoption("--weights")
    return (
        str(weights.resolve())
        if weights
        else random_label(config.getoption("--init"), config.getoption("--weights-seed"))
    )


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    from bench.environment import environment

    machine_info["unidiffuser"] = environment(weights=weights_label(config), size=matrix(config).size)


def pytest_benchmark_update_commit_info(config: pytest.Config, commit_info: dict) -> None:
    # pytest-benchmark reads the tree's .git, which in a copied tree may be stale: the JSON must not name one commit
    # in its header (bench.environment) and another in commit_info
    from bench.environment import COMMIT_ENV, given_commit

    if commit := given_commit():
        commit_info.update(id=commit, dirty=None, time=None, author_time=None, branch=None, source=COMMIT_ENV)


@pytest.fixture(scope="session")
def env_info(models, run_matrix: Matrix, pytestconfig: pytest.Config) -> dict[str, str]:
    from bench.environment import environment

    injected = pytestconfig.getoption("--fault")
    return environment(weights=models.weights, size=run_matrix.size) | (
        {"fault": f"{injected[1].label} (injected by --fault)"} if injected else {}
    )


class ResultLog:
    """Tables of rows that tests add ("rows": one per engine and mark; "engines", "activations", "faults"), and
    "tests": every test's outcome once the log is open, rewritten to one JSON file after every test: a run cut short
    still leaves its results, and a test that died before it could add rows (an exception, out of memory) is there."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path, self.env, self.tables = path, env, {"rows": []}

    @property
    def rows(self) -> list[dict]:
        return self.tables["rows"]

    def add(self, rows: list[dict], *, table: str = "rows") -> None:
        self.tables.setdefault(table, []).extend(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({"env": self.env, **self.tables}, indent=1, default=float))


RESULT_LOG = pytest.StashKey[ResultLog]()  # the open log, where pytest_runtest_makereport finds it


@pytest.fixture(scope="session")
def accuracy_log(pytestconfig: pytest.Config, env_info: dict[str, str]):
    from reports.common import free_path

    stamp = env_info["date"].replace(" ", "_").replace(":", "")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    name = f"accuracy-{stamp}{'-' + worker if worker else ''}"
    log = ResultLog(free_path(pytestconfig.getoption("--results-dir"), name), env_info)
    pytestconfig.stash[RESULT_LOG] = log
    yield log
    report = pytestconfig.getoption("--accuracy-report")
    if any(log.tables.values()) and report is not None:
        from reports.accuracy import write_report

        write_report([log.path], report, overwrite=pytestconfig.getoption("--overwrite-reports"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    log, row = item.config.stash.get(RESULT_LOG, None), outcome_row(outcome.get_result())
    if log is not None and row is not None:
        log.add([row], table="tests")


def outcome_row(report: pytest.TestReport) -> dict[str, str] | None:
    """A test's outcome from the phase that decides it (the call; a setup that failed or skipped; a teardown that
    failed, whose row then replaces the call's in the report), with the reason for anything but a pass."""
    if not (report.when == "call" or report.failed or (report.skipped and report.when == "setup")):
        return None
    if report.passed:
        why = ""
    elif isinstance(report.longrepr, tuple):  # a skip: (file, line, reason)
        why = str(report.longrepr[2])
    else:
        crash = getattr(report.longrepr, "reprcrash", None)
        why = crash.message if crash is not None else str(report.longrepr)
    lines = why.strip().splitlines()
    return {
        "test": report.nodeid,
        "outcome": report.outcome,
        "phase": report.when,
        "reason": lines[0][:300] if lines else "",
    }
