"""The command line as a newcomer meets it on a CPU: progress while it works, any step count, the shipped prompts, and
bad input refused before any work, in one line that names the problem and the fix, with nothing lost."""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import pytest

from reference.prompts import default_prompts_path, read_prompts

pytest_plugins = ["pytester"]
TINY = ("--size", "tiny", "--device", "cpu")
FAST = ("--warmup", "0", "--repeat", "1")


@pytest.fixture
def bench(pytester):
    def run(*args):
        return pytester.run(sys.executable, "-m", "bench", *args)

    return run


def refused(result, message: str) -> None:
    assert result.ret == 2, result.stderr.str()
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_long_work_shows_progress_and_quiet_hides_it(bench, tmp_path):
    shown = bench("generate", *TINY, "--backend", "eager", "--out", str(tmp_path / "a"))
    assert shown.ret == 0, shown.stderr.str()
    for bar in ("tiny models, random weights", "building engines", "images (1 warm-up, 3 timed)"):
        assert bar in shown.stderr.str()
    quiet = bench("generate", *TINY, "--backend", "eager", "--out", str(tmp_path / "b"), "--quiet")
    assert quiet.ret == 0 and quiet.stderr.str().strip() == ""
    quiet.stdout.fnmatch_lines(["tiny eager fp32 on cpu *: median * s/image over 3 runs -> *"])


def test_the_manifest_records_the_measured_time(bench, tmp_path):
    result = bench("generate", *TINY, "--out", str(tmp_path), "--quiet")
    assert result.ret == 0
    manifest = json.loads((tmp_path / "tiny-reference-fp32" / "manifest.json").read_text())
    assert manifest["images"][0]["seconds"] == manifest["median_seconds"]
    assert manifest["median_seconds"] in manifest["seconds_per_image"] and len(manifest["seconds_per_image"]) == 3
    assert manifest["median_seconds"] > 1e-3  # a tiny image is tens of milliseconds, not a cached result's microsecond


def test_two_rows_of_one_image_are_refused_naming_them(bench, tmp_path):
    prompts = tmp_path / "p.tsv"
    prompts.write_text("index\tseed\tprompt\n0\t1\ta cat\n1\t2\ta dog\n0\t1\ta cow\n")
    result = bench("references", *TINY, "--prompts", str(prompts), "--out", str(tmp_path / "refs"))
    refused(result, f"error: {prompts}:4: index 0 and seed 1 repeat line 2; both would write the same image files*")
    assert not (tmp_path / "refs").exists()


def test_the_evaluation_prompts_ship_inside_the_package(bench, pytester):
    path = default_prompts_path()
    assert path.is_relative_to(Path(__import__("reference").__file__).parent)  # not ../shared beside a checkout
    rows = read_prompts(path)
    assert len(rows) == 40 and rows[0].seed == 29764 and rows[0].prompt == "A dog adventuring under the sea"
    result = bench("references", *TINY, "--limit", "2", "--out", "refs", "--quiet")  # in an empty folder
    assert result.ret == 0, result.stderr.str()
    names = sorted(p.name for p in (pytester.path / "refs").glob("*.png"))
    assert names == ["00_29764.png", "01_38671.png"]


def test_the_shipped_prompts_are_the_shared_ones():
    shared = Path(__file__).resolve().parents[3] / "shared" / "prompts.tsv"
    if not shared.is_file():
        pytest.skip("../shared/prompts.tsv is not beside this checkout")
    assert default_prompts_path().read_bytes() == shared.read_bytes()


@pytest.mark.parametrize("where", ["out-is-a-file", "parent-is-a-file"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(bench, tmp_path, where):
    blocker = tmp_path / "taken"
    blocker.write_text("the user's file")
    out = blocker if where == "out-is-a-file" else blocker / "inside"
    for command in (("generate", *TINY), ("references", *TINY, "--limit", "1")):
        result = bench(*command, "--out", str(out))
        refused(result, f"error: output folder {out}*: {blocker} is a file, not a folder; choose another --out")
        assert "models" not in result.stderr.str()  # refused before the models were made: no progress bar started
    assert blocker.read_text() == "the user's file"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_refused_before_any_work(bench, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(bench("generate", *TINY, "--out", str(locked)), f"error: output folder *: {locked} is not writable*")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_no_one_may_write_into_is_refused_before_any_work(bench):
    """/proc/self takes no new files, not even from root (this test's stand-in for a read-only folder under CI)."""
    out = "/proc/self/unidiffuser-out"
    result = bench("generate", *TINY, "--out", out)
    refused(result, f"error: output folder {out}/tiny-reference-fp32: /proc/self is not writable; choose another --out")
    assert "models" not in result.stderr.str()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", "1e23"], "*argument --seed: expected a whole number from 0 to 2[*][*]63-1, got '1e23'"),
        (["--seed", str(10**23)], "*argument --seed: expected a whole number from 0 to 2[*][*]63-1, got '1000*'"),
        (["--seed", "-1"], "*argument --seed: expected a whole number from 0 to 2[*][*]63-1, got '-1'"),
        (["--steps", "0"], "*argument --steps: expected a whole number of at least 1, got '0'"),
        (["--repeat", "0"], "*argument --repeat: expected a whole number of at least 1, got '0'"),
        (["--device", "gpu"], "*argument --device: expected auto, cpu, cuda or cuda:N (a GPU's index), got 'gpu'"),
    ],
    ids=["seed-float", "seed-overflow", "seed-negative", "steps", "repeat", "device"],
)
def test_numbers_and_devices_are_checked_naming_the_option(bench, args, message):
    refused(bench("generate", *args), message)


def test_a_gpu_is_picked_by_its_index(bench):
    import torch

    from bench.environment import gpus

    result = bench("generate", "--device", "cuda:7", "--quiet")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > 7:
        pytest.skip("this machine has a cuda:7")
    seen = "torch sees no CUDA device" if not count else f"torch sees {gpus(count)}; pick one of them"
    refused(result, f"error: device 'cuda:7' asked for, but {seen}*")


@pytest.mark.parametrize("steps", ["25", "1"])
def test_any_step_count_makes_an_image(bench, tmp_path, steps):
    result = bench("generate", *TINY, *FAST, "--steps", steps, "--out", str(tmp_path), "--quiet")
    assert result.ret == 0, result.stderr.str()
    manifest = json.loads((tmp_path / "tiny-reference-fp32" / "manifest.json").read_text())
    assert manifest["steps"] == int(steps) and (tmp_path / "tiny-reference-fp32" / "00_29764.png").is_file()


def test_the_benchmarks_take_any_step_count(pytester):
    bench_file = Path(__file__).resolve().parents[1] / "bench_pipeline.py"
    out = pytester.path / "b.json"
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(bench_file), "-k",
                          "pytorch-fp32", "--bench-steps", "20,25", "--benchmark-json", str(out),
                          "--bench-images", str(pytester.path / "images"))  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    runs = {b["name"]: b["extra_info"]["steps"] for b in json.loads(out.read_text())["benchmarks"]}
    assert runs == {"test_pipeline[20steps-pytorch-fp32]": 20, "test_pipeline[25steps-pytorch-fp32]": 25}


def test_the_benchmarks_take_any_batch_size(pytester):
    bench_file = Path(__file__).resolve().parents[1] / "bench_pipeline.py"
    out, images = pytester.path / "b.json", pytester.path / "images"
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(bench_file), "-k",
                          "pytorch-fp32", "--bench-batch", "1,3", "--bench-steps", "2", "--benchmark-json", str(out),
                          "--bench-images", str(images))  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    runs = {b["name"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert sorted(runs) == ["test_pipeline[2steps-batch1-pytorch-fp32]", "test_pipeline[2steps-batch3-pytorch-fp32]"]
    three = runs["test_pipeline[2steps-batch3-pytorch-fp32]"]
    assert (three["batch"], three["images"], three["steps"]) == (3, 3, 2)
    assert three["images_per_s"] == pytest.approx(3e3 / three["wall_p50_ms"])
    assert all(info["footprint_mib"] is None for info in runs.values())  # measured by CUDA's allocator alone
    assert all(info["nonfinite_images"] == 0 for info in runs.values())
    saved = json.loads((images / "pytorch-fp32-2steps-batch3" / "manifest.json").read_text())["images"]
    assert [e["index"] for e in saved] == [0, 1, 2]  # the first three prompts, one image each
    assert len({e["seconds"] for e in saved}) == 1 and saved[0]["seconds"] > 0  # one call's time, shared by its three


def test_a_prompt_longer_than_clip_reads_is_said_with_what_is_dropped():
    import torch

    from reference.checkpoints import load_models
    from reference.clip import PromptTruncated
    from reference.configs import ModelConfig
    from reference.dpm_solver import make_plan
    from reference.pipeline import Pipeline

    pipe = Pipeline(load_models(ModelConfig.from_name("tiny")), "cpu", plan=make_plan(steps=1))
    long = " ".join(["a red dog swimming"] * 65)  # 260 tokens, and the start and end ones
    said = (
        r"the prompt is 262 tokens with its start and end tokens and CLIP reads 77: the last 185 are dropped "
        + r"\('swimming a red dog swimming a red dog .*\.\.\.'\)"
    )
    with pytest.warns(PromptTruncated, match=said):
        image = pipe(long, 0).image
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncated)
        pipe("A dog adventuring under the sea", 0)  # 9 tokens: nothing to say
    with pytest.warns(PromptTruncated):
        assert torch.equal(image, pipe(long + " and more", 0).image)  # what is past 77 tokens is not read


def test_help_speaks_to_users(bench):
    result = bench("generate", "--help")
    assert result.ret == 0
    text = result.stdout.str()
    for leftover in ("PosixPath", "SPEC", "argparse", "keyword arguments"):
        assert leftover not in text
    for backend in ("eager", "autocast", "inductor", "onnxruntime", "trt", "trtllm"):
        assert backend in text
    assert "noise" in text  # random weights make noise images, and --help says so


def test_the_onnx_export_is_quiet(bench, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'unidiffuser-bench[onnx]'")
    result = bench("generate", *TINY, *FAST, "--backend", "onnxruntime", "--out", str(tmp_path), "--quiet")
    assert result.ret == 0, result.stderr.str()
    assert "torchvision" not in result.stderr.str() and result.stderr.str().strip() == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{}", "lacks [[]'benchmarks']; expected pytest-benchmark JSON*"),
        ('{"benchmarks": []}', "'benchmarks' holds no benchmark*"),
        ('{"benchmarks": [{"name": "x"}]}', "benchmark 0 lacks a name or stats.median*"),
        ('{"benchmarks": [{"name": "x", "st', "not valid JSON at line 1, column *(a run cut short?)*"),
        ("[1, 2]", "holds a JSON list; expected pytest-benchmark JSON*, an object"),
    ],
    ids=["empty", "no-benchmarks", "no-stats", "truncated", "list"],
)
def test_reports_name_the_file_and_what_was_expected(pytester, text, expected):
    bad = pytester.path / "bad.json"
    bad.write_text(text)
    result = pytester.run(sys.executable, "-m", "reports", "speedup", str(bad), "--out", str(pytester.path / "s.md"))
    refused(result, f"error: {bad}: {expected}")
    for kind, what in (("accuracy", "an accuracy result"), ("pd", "an image-quality result")):
        result = pytester.run(sys.executable, "-m", "reports", kind, str(bad), "--out", str(pytester.path / "x.md"))
        refused(result, f"error: {bad}: *expected {what}*")


def test_a_run_that_will_not_fit_is_refused_before_it_starts(pytester):
    accuracy = Path(__file__).resolve().parents[2] / "reference" / "tests" / "test_accuracy.py"
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(accuracy), "--size", "full",
                          "--device", "cpu", "-k", "decoder", "--memory-budget", "24")  # fmt: skip
    assert result.ret == 4  # a usage error: nothing ran
    result.stderr.fnmatch_lines(["*the accuracy suite at size 'full' judging decoder needs about * GiB on the cpu and "
                                 "the budget is 24.0 GiB; use --size tiny, a GPU*"])  # fmt: skip


def test_the_memory_estimate_holds_at_the_size_it_was_measured_and_scales_with_the_model():
    from bench.memory import GIB, estimate
    from reference.configs import ModelConfig

    tiny, full = ModelConfig.from_name("tiny"), ModelConfig.from_name("full")
    # measured: the tiny suite's peak resident size on the CPU (KiB, `/usr/bin/time -f %M pytest ... -k decoder`)
    for component, kib in (("decoder", 1412796), ("uvit", 861372), ("clip", 876736)):
        assert estimate(tiny, judged=(component,)) == pytest.approx(kib * 1024, rel=0.15)
    assert estimate(full, judged=("decoder",)) > 24 * GIB > estimate(full)  # the run that was killed; one image fits
