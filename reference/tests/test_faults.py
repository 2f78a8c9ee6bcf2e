"""The fault matrix: proof that the suite catches real bugs in an engine and names the layer where they are.

Each fault of engines/faults.py is injected into the engine's own module, after its transforms, at an early, a
middle and a late layer of each component where it applies, at every precision. The clean engine of the same build
must raise no alarm; the faulty one must fail with its first failing mark exactly the one right after the fault,
wherever the fault, injected into the fp64 oracle, moves that mark by more than the mark's bound (what rounding at
that precision allows): an engine that ignores the fault (reads an eps from the wrong layer, say) fails. Where it
moves it by less, or the bound exceeds its cap, the fault is recorded as below that precision's rounding or
unverifiable there, with both numbers, and reports/accuracy.md says so. FP8 faults are judged by the FP8-linear check
(test_accuracy.py), which names the faulty linear itself.

Tiny on a CPU (eager, with the options that run there), full size on a GPU (eager with each fast recipe's kernels).
"""

from __future__ import annotations

import gc
import math
import statistics
from dataclasses import dataclass

import pytest
import torch

from engines import BackendUnavailable, build_engine
from engines.faults import Fault, FaultDoesNotApply
from engines.recipes import fast_options
from reference.compare import RunResult, errors_against, first_failure, rel_l2
from reference.tests import References, fp8_linear_check, fp8_linears, fp8_marks

# (component, fault, position, where it is injected, the mark that must fail first); {mid} and {last} are per size
FAULTS = [
    *[("clip", kind, pos, f"clip.encoder.layers.{i}.self_attn", f"clip.encoder.layers.{i}.layer_norm2")
      for kind in ("heads", "scale") for pos, i in (("early", "0"), ("middle", "{mid}"), ("late", "{last}"))],
    *[("clip", "ln_eps", pos, f"clip.encoder.layers.{i}.layer_norm1", f"clip.encoder.layers.{i}.layer_norm1")
      for pos, i in (("early", "0"), ("middle", "{mid}"), ("late", "{last}"))],
    *[("uvit", kind, pos, f"uvit.{b}.attn", f"uvit.{b}.norm2")
      for kind in ("heads", "scale") for pos, b in (("early", "in_blocks.0"), ("middle", "mid_block"),
                                                    ("late", "out_blocks.{half}"))],
    *[("uvit", "ln_eps", pos, f"uvit.{b}.norm2", f"uvit.{b}.norm2")
      for pos, b in (("early", "in_blocks.0"), ("middle", "mid_block"), ("late", "out_blocks.{half}"))],
    *[("uvit", "gelu_tanh", pos, f"uvit.{b}.mlp", f"uvit.{b}.norm3")
      for pos, b in (("early", "in_blocks.0"), ("middle", "mid_block"), ("late", "out_blocks.{half}"))],
    ("uvit", "guidance0", "late", "", "output"),
    *[("uvit", kind, pos, f"uvit.{b}.{linear}", f"uvit.{b}.{linear}")
      for kind, linear in (("fp8_unscaled", "mlp.fc2"), ("fp8_scale_transposed", "attn.proj"),
                           ("fp8_wrong_axis", "attn.proj"))
      for pos, b in (("early", "in_blocks.0"), ("middle", "mid_block"), ("late", "out_blocks.{half}"))],
    *[("decoder", kind, pos, norm, norm)
      for kind in ("gn_fp16_stats", "gn_eps")
      for pos, norm in (("early", "decoder.mid.block_1.norm1"), ("middle", "decoder.up.2.block.1.norm2"),
                        ("late", "decoder.norm_out"))],
]  # fmt: skip
PRECISIONS = {"clip": ("fp32", "fp16", "bf16"), "uvit": ("fp32", "fp16", "bf16", "fp8"),
              "decoder": ("fp32", "fp16", "bf16")}  # fmt: skip
CASES = [
    (c, kind, pos, target, expect, p)
    for c, kind, pos, target, expect in FAULTS
    for p in PRECISIONS[c]
    if p == "fp8" or not kind.startswith("fp8_")
]
# must be caught (first mark exact) where the fault moves its mark by this many times the mark's bound
CLEAR = 2.0


def resolve(text: str, models) -> str:
    return text.format(mid=models.config.clip.layers // 2, last=models.config.clip.layers - 1,
                       half=models.config.uvit.depth // 2 - 1)  # fmt: skip


def engine_options(component: str, precision: str, device) -> dict:
    """The build faults go into: each fast recipe's options on a GPU; on a CPU those that run there."""
    opts = dict(fast_options(component, "fp16" if precision in ("fp32", "bf16") else precision))
    if device.type != "cuda":  # our Triton kernels need a GPU (or the interpreter)
        opts = {k: v for k, v in opts.items() if not (k == "attention" and v == "triton")}
        opts = {
            k: v for k, v in opts.items() if not (k.startswith("fp8_") and k not in ("fp8_scaling", "fp8_accumulate"))
        }
    opts.pop("persistent_rows", None)  # an Inductor setting; faults go into eager engines
    if precision in ("fp32", "bf16"):  # fp16's epilogue and SDPA choices do not carry over
        opts = {k: v for k, v in opts.items() if k != "mlp"}
    return opts


@dataclass
class Built:
    name: str
    run: RunResult
    approximations: tuple[str, ...]
    meta: dict


@pytest.fixture(autouse=True)
def _free_after_each_case():
    """Each case copies the full-size model (the faulty engine, the faulty fp64 oracle): free them before the next
    rather than when the collector gets round to it."""
    yield
    _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def clean_runs(models, references, device):
    cache: dict[tuple, Built] = {}

    def get(component: str, precision: str, marks: tuple[str, ...]) -> Built:
        key = (component, precision, marks)
        if key not in cache:
            opts = engine_options(component, precision, device)
            with build_engine(component, models, precision=precision, marks=marks, **opts) as e:
                cache[key] = Built(e.name, RunResult(e.name, e(**references(component).inputs)), e.approximations,
                                   e.meta)  # fmt: skip
        return cache[key]

    return get


@pytest.fixture(scope="module")
def fault_log(accuracy_log):
    return lambda row: accuracy_log.add([row], table="faults")


@pytest.mark.parametrize("component, kind, position, target, expect, precision", CASES,
                         ids=[f"{c}-{k}-{pos}-{p}" for c, k, pos, _, _, p in CASES])  # fmt: skip
def test_fault_is_caught_where_it_is_injected(models, references, clean_runs, fault_log, device, component, kind,
                                              position, target, expect, precision):  # fmt: skip
    target, expect = resolve(target, models), resolve(expect, models)
    ref = references(component)
    fp8_fault = kind.startswith("fp8_")
    paths = [target] if fp8_fault else []
    marks = fp8_marks(paths) if fp8_fault else ref.marks
    try:
        clean = clean_runs(component, precision, marks)
        opts = engine_options(component, precision, device)
        with build_engine(component, models, precision=precision, marks=marks, fault=Fault(kind, target),
                          **opts) as faulty_engine:  # fmt: skip
            faulty = RunResult(faulty_engine.name, faulty_engine(**ref.inputs))
    except (FaultDoesNotApply, BackendUnavailable) as e:
        pytest.skip(f"{kind} at {target} in {precision}: {e}")
    row = {"component": component, "fault": kind, "position": position, "target": target, "expected": expect,
           "precision": precision, "engine": clean.name}  # fmt: skip
    if fp8_fault:
        check = {r["linear"]: r for r in fp8_linear_check(faulty.outputs, ref.module, clean, paths)}
        clean_check = {r["linear"]: r for r in fp8_linear_check(clean.run.outputs, ref.module, clean, paths)}
        first = next((p for p, r in check.items() if not r["passed"]), None)
        bound, cap, alarm = check[expect]["bound"], 0.05, next((p for p, r in clean_check.items() if not r["passed"]),
                                                                 None)  # fmt: skip
    else:
        oracle = references(component, clean.approximations)
        judged = oracle.judge(faulty, precision)
        first, alarm = first_failure(judged), first_failure(oracle.judge(clean.run, precision))
        bound, cap = judged[expect].bound, judged[expect].cap
    if fp8_fault:  # only the engine has FP8 linears: the fault's size as the engine shows it
        effect = rel_l2(faulty.outputs[expect], clean.run.outputs[expect])
    else:  # the fault's own size, free of rounding: the same fault in the fp64 oracle
        oracle = references(component, clean.approximations)
        with build_engine(component, models, module=oracle.module, precision="fp64", marks=marks,
                          fault=Fault(kind, target)) as e:  # fmt: skip
            effect = rel_l2(e(**ref.inputs)[expect], oracle.oracle.outputs[expect])
    # a fault several times the bound must fail even where the bound is over the cap (an error over any bound fails)
    verdict = ("must catch" if not math.isfinite(effect) or effect > CLEAR * bound
               else "unverifiable" if bound > cap else "below rounding" if effect < bound else "marginal")  # fmt: skip
    caught = first == expect
    fault_log({**row, "effect": effect, "bound": bound, "cap": cap, "class": verdict, "first_failing_mark": first or
               "-", "caught": caught, "clean_alarm": alarm or "-"})  # fmt: skip

    assert alarm is None, f"{clean.name} (clean) raised an alarm at {alarm}"
    if verdict == "must catch":
        assert caught, (f"{kind} at {target} ({precision}) moved {expect} by {effect:.3g}, {effect / bound:.0f}x its "
                        f"bound {bound:.3g}; the first failing mark was {first!r}, not {expect!r}")  # fmt: skip
    elif verdict != "marginal" or not caught:
        pytest.skip(f"{kind} at {target} ({precision}): {verdict}: effect {effect:.3g} against bound {bound:.3g} "
                    f"(cap {cap:g}){'; caught anyway' if caught else ''}")  # fmt: skip


SEEDS = (0, 1, 2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("component", ["clip", "uvit", "decoder"])
def test_clean_engines_raise_no_alarm(model_config, device, component, seed, accuracy_log):
    """Over several weight seeds, each precision's clean build (the fault matrix's) fails no mark, twice run."""
    from reference.checkpoints import load_models

    models = load_models(model_config, seed=seed).to(device)
    alarms = {}
    for precision in PRECISIONS[component]:
        try:
            name, firsts = _clean_run(component, models, precision, device)
        except BackendUnavailable as e:
            alarms[precision] = f"skipped: {e}"
            continue
        finally:  # one precision's engine, oracle and runs at a time: each is a copy of the model at full size
            _free_memory()
        row = {"component": component, "seed": seed, "precision": precision, "engine": name, "runs": len(firsts),
               "alarms": sum(f is not None for f in firsts)}  # fmt: skip
        accuracy_log.add([row], table="clean")
        if any(firsts):
            alarms[precision] = firsts
    assert not {p: a for p, a in alarms.items() if not str(a).startswith("skipped")}, alarms


def _clean_run(component: str, models, precision: str, device) -> tuple[str, list]:
    """The clean build at `precision`, run twice and judged: the engine's name and each run's first failing mark."""
    from engines.components import component_module, default_marks

    marks = default_marks(component, component_module(component, models))
    engine = build_engine(component, models, precision=precision, marks=marks,
                          **engine_options(component, precision, device))  # fmt: skip
    ref = References.make(component, models, engine.approximations, device=device)
    runs = [RunResult(engine.name, engine(**ref.inputs)) for _ in range(2)]
    return engine.name, [first_failure(ref.judge(run, precision)) for run in runs]


def test_anchoring_confines_a_fault_to_its_mark(models, references):
    """Judged anchored, a fault shows at the mark after it and nowhere downstream, though it changes every mark
    after it end to end: each mark's error is what was computed between two marks (References.anchored)."""
    ref = references("uvit")
    with build_engine("uvit", models, module=ref.module, precision="fp64", marks=ref.marks,
                      fault=Fault("heads", "uvit.in_blocks.0.attn")) as e:  # fmt: skip
        run = RunResult(e.name, e(**ref.inputs))
    anchored, carried = errors_against(run, ref.anchored(run)), errors_against(run, ref.oracle)
    marks = list(run.outputs)
    after = marks[marks.index("uvit.in_blocks.0.norm2") + 1 :]
    assert anchored["uvit.in_blocks.0.norm2"] > 1e-2
    assert max(anchored[m] for m in marks if m != "uvit.in_blocks.0.norm2") < 1e-12
    assert min(carried[m] for m in after) > 1e-4  # end to end, the fault is everywhere after it


@pytest.mark.parametrize("component", ["uvit", "decoder"])
def test_bounds_come_from_the_rounding_added_between_two_marks(references, component):
    """Each bound is set by the plain run's error anchored, what bf16 rounding adds between two marks, not by its error
    end to end, which piles up with depth: over the later half of the marks the end-to-end error is several times the
    local one (tiny, CPU: a median of 5.6 for the U-ViT, 8.8 for the decoder). Bounds from the end-to-end error would
    widen with depth and let the fault matrix class real faults as rounding."""
    ref = references(component)
    local, carried = ref.local_plain_errors("bf16"), ref.plain_errors("bf16")
    marks = [m for m in local if m != "output"]
    late = marks[len(marks) // 2 :]
    assert statistics.median(carried[m] / local[m] for m in late if local[m] > 0) > 2


def test_an_fp8_linear_off_its_emulation_by_more_than_its_bound_fails(models, references, device):
    """The FP8-linear check's threshold itself: a clean engine's linears pass; one linear's output moved from its
    emulation by twice its bound fails, by half its bound still passes (the error adds in quadrature to the engine's
    own)."""
    ref = references("uvit")
    paths = fp8_linears(ref.module)[:2]
    try:
        with build_engine("uvit", models, precision="fp8", marks=fp8_marks(paths),
                          **engine_options("uvit", "fp8", device)) as engine:  # fmt: skip
            outputs = engine(**ref.inputs)
            rows = fp8_linear_check(outputs, ref.module, engine, paths)
            assert all(r["passed"] for r in rows) and all(r["rel_l2"] < r["bound"] / 3 for r in rows), rows
            target, bound = paths[0], rows[0]["bound"]
            noise = torch.randn(outputs[target].shape, generator=torch.Generator().manual_seed(0)).to(outputs[target])
            for size, passes in ((2.0, False), (0.5, True)):
                moved = dict(outputs, **{target: outputs[target] + noise * (size * bound * outputs[target].norm()
                                                                            / noise.norm())})  # fmt: skip
                row = fp8_linear_check(moved, ref.module, engine, paths)[0]
                assert row["passed"] is passes and row["bound"] == bound, (size, row)
    except BackendUnavailable as e:
        pytest.skip(str(e))
