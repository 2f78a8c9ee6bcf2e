"""The seed protocol's image plan: 5 warm-up images from prompts.tsv, then the (possibly limited) timed pairs; and the
images it keeps."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.bench_pipeline import WARMUP_IMAGES, image_plan
from bench.cli import references
from bench.quality import compare_folders
from reference.prompts import default_prompts_path, read_prompts


@pytest.fixture
def prompts_tsv(tmp_path):
    """A prompts file in the layout of ../shared/prompts.tsv, 12 rows."""
    path = tmp_path / "prompts.tsv"
    path.write_text("index\tseed\tprompt\n" + "".join(f"{i}\t{100 + i}\tprompt number {i}\n" for i in range(12)))
    return path


@pytest.mark.parametrize("limit", [0, 2, 8])
def test_seed_plan_calls_every_image_it_counts(prompts_tsv, limit):
    rows = read_prompts(prompts_tsv)
    prompts, warmup, timed = image_plan("seed", rounds=3, warmup=1, limit=limit, path=prompts_tsv)
    assert len(prompts) == warmup + timed  # pytest-benchmark draws exactly this many
    assert warmup == WARMUP_IMAGES
    assert prompts[:warmup] == [[p] for p in rows[:WARMUP_IMAGES]]
    assert prompts[warmup:] == [[p] for p in (rows[:limit] if limit else rows)]


def test_quick_plan_repeats_one_prompt():
    prompts, warmup, timed = image_plan("quick", rounds=3, warmup=2)
    assert (warmup, timed, len(prompts)) == (2, 3, 5)
    assert {tuple(call) for call in prompts} == {(read_prompts(default_prompts_path())[0],)}


@pytest.mark.parametrize("batch", [2, 41])
def test_a_batch_call_takes_the_first_prompts_in_turn(batch):
    rows = read_prompts(default_prompts_path())
    prompts, warmup, timed = image_plan("quick", rounds=2, warmup=1, batch=batch)
    assert (warmup, timed) == (1, 2)
    assert prompts == [[rows[i % len(rows)] for i in range(batch)]] * 3


def test_the_seed_protocol_is_one_image_a_call(prompts_tsv):
    with pytest.raises(pytest.UsageError, match="one image at a time.*--bench-protocol quick"):
        image_plan("seed", rounds=3, warmup=1, path=prompts_tsv, batch=4)


def test_images_with_nan_are_counted():
    import torch

    from bench.bench_pipeline import nonfinite
    from reference.pipeline import Result

    def made(stage):
        return Result(torch.zeros(2, 2, 3, dtype=torch.uint8), torch.zeros(1, 4, 2, 2), "seed", "truncate", stage)

    p = read_prompts(default_prompts_path())[0]
    assert nonfinite([(p, made(None)), (p, made("uvit")), (p, made("decoder"))]) == 2


ROOT = Path(__file__).resolve().parents[2]


def test_a_component_whose_output_is_nan_fails_its_benchmark_and_its_json_says_so(tmp_path):
    """A NaN weight in the U-ViT: its component benchmark fails naming the engine, and the time pytest-benchmark
    keeps of it carries the count of NaN/Inf outputs, which the speed-up report marks."""
    from reference.checkpoints import load_models, write_checkpoints
    from reference.configs import ModelConfig

    models = load_models(ModelConfig.from_name("tiny"), seed=0)
    with torch.no_grad():
        models.uvit.out_blocks[-1].mlp.fc2.weight[0, 0] = float("nan")
    weights = write_checkpoints(models, tmp_path / "weights")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "bench/bench_components.py",
           "--benchmark-only", "--size", "tiny", "--device", "cpu", "--bench-set", "none", "--bench-engine",
           "uvit/eager/fp32", "--bench-rounds", "1", "--weights", str(weights),
           "--benchmark-json", str(tmp_path / "bench.json")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "uvit/eager/fp32: 1056 of 1056 output values are NaN/Inf" in proc.stdout, (
        proc.stdout[-3000:]
    )
    (timed,) = json.loads((tmp_path / "bench.json").read_text())["benchmarks"]
    assert timed["extra_info"]["nonfinite_outputs"] == 1056


def seed_protocol(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """pytorch-fp32 timed by the seed protocol on the first two pairs, tiny, on the CPU, its images in tmp/timed."""
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "bench/bench_pipeline.py::test_pipeline"
           "[pytorch-fp32]", "--benchmark-only", "--size", "tiny", "--device", "cpu", "--bench-protocol", "seed",
           "--bench-limit", "2", "--bench-warmup", "0", "--bench-images", str(tmp_path / "timed"),
           "--benchmark-json", str(tmp_path / "bench.json"), *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_protocols_images_are_what_the_images_stage_writes(tmp_path):
    """A seed-protocol run keeps its timed images as `bench references` writes them, so `.ci/gpu-reports` makes each
    recipe's 40 images once: `bench quality` takes the folder, and pytorch-fp32's are the references' bit for bit."""
    proc = seed_protocol(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    timed = tmp_path / "timed" / "pytorch-fp32"
    manifest = json.loads((timed / "manifest.json").read_text())
    assert [(e["index"], e["seed"], e["file"]) for e in manifest["images"]] == [(0, 29764, "00_29764.png"),
                                                                                (1, 38671, "01_38671.png")]  # fmt: skip
    assert all(e["seconds"] > 0 for e in manifest["images"]) and manifest["nonfinite"] == {}
    refs = references(out=tmp_path / "refs", limit=2, size="tiny", device="cpu", recipe="pytorch-fp32", progress=False)
    judged = compare_folders(refs, timed, inception_weights=None, device=torch.device("cpu"))
    assert judged["missing"] == [] and len(judged["rows"]) == 2
    assert judged["checks"]["psnr_db"]["value"] == math.inf and judged["checks"]["latents_rel_l2"]["value"] == 0


def test_a_protocol_image_with_nan_is_listed_and_fails_its_verdict(tmp_path):
    """A NaN weight in the U-ViT: the protocol's run fails naming the refused images, its folder lists them, and the
    images verdict counts them, rather than finding the images missing."""
    from reference.checkpoints import load_models, write_checkpoints
    from reference.configs import ModelConfig

    models = load_models(ModelConfig.from_name("tiny"), seed=0)
    with torch.no_grad():
        models.uvit.out_blocks[-1].mlp.fc2.weight[0, 0] = float("nan")
    proc = seed_protocol(tmp_path, "--weights", str(write_checkpoints(models, tmp_path / "weights")))
    assert proc.returncode == 1 and "2 of 2 images refused" in proc.stdout, proc.stdout[-3000:]
    timed = tmp_path / "timed" / "pytorch-fp32"
    assert sorted(json.loads((timed / "manifest.json").read_text())["nonfinite"]) == ["00_29764", "01_38671"]
    refs = references(out=tmp_path / "refs", limit=2, size="tiny", device="cpu", recipe="pytorch-fp32", progress=False)
    judged = compare_folders(refs, timed, inception_weights=None, device=torch.device("cpu"))
    assert judged["verdict"] == "FAIL" and judged["checks"]["finite"]["value"] == 2


def test_gpu_reports_makes_a_recipes_images_once_and_keeps_what_is_made(tmp_path):
    """`.ci/gpu-reports protocol images`: the protocol's first run of a recipe writes the images stage's folder, which
    that stage then finds made; a second run keeps its images apart, as does a run after the images stage."""

    def run(results: Path, recipes: str, *stages: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "SIZE": "tiny", "LIMIT": "2", "RESULTS": str(results), "PYTHON": sys.executable,
               "RECIPES": recipes}  # fmt: skip
        return subprocess.run(["bash", ".ci/gpu-reports", *stages], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip

    proc = run(tmp_path / "a", "pytorch-fp32 pytorch-fp32:2", "protocol")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    made = json.loads((tmp_path / "a" / "images" / "pytorch-fp32" / "manifest.json").read_text())
    assert made["protocol"] == "seed" and len(made["images"]) == 2
    assert (tmp_path / "a" / "images-timed" / "pytorch-fp32" / "manifest.json").is_file()
    proc = run(tmp_path / "a", "pytorch-fp32", "images")
    assert proc.returncode == 0 and "images pytorch-fp32: done" in proc.stdout, proc.stdout[-3000:]
    # the images stage first: what it made stays, the protocol's images go apart
    assert run(tmp_path / "b", "pytorch-fp32", "images").returncode == 0
    before = (tmp_path / "b" / "images" / "pytorch-fp32" / "manifest.json").read_bytes()
    assert run(tmp_path / "b", "pytorch-fp32", "protocol").returncode == 0
    assert (tmp_path / "b" / "images" / "pytorch-fp32" / "manifest.json").read_bytes() == before
    assert (tmp_path / "b" / "images-timed" / "pytorch-fp32" / "manifest.json").is_file()


def test_gpu_reports_runs_with_its_results_in_another_checkout(tmp_path):
    """RESULTS inside another checkout of the project (a run's results beside the code of another commit): a folder
    that exists must stay an option's value. pytest reads `--bench-images DIR` before the conftest defines the option,
    takes DIR for a test path, and loads DIR's checkout's conftest beside ours: both add --size, and pytest stops."""
    other = tmp_path / "other"
    (other / "results" / "images").mkdir(parents=True)
    shutil.copy(ROOT / "conftest.py", other / "conftest.py")
    env = {**os.environ, "SIZE": "tiny", "LIMIT": "1", "RESULTS": str(other / "results"), "PYTHON": sys.executable,
           "RECIPES": "pytorch-fp32"}  # fmt: skip
    proc = subprocess.run(["bash", ".ci/gpu-reports", "protocol"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert "already added" not in proc.stderr, proc.stderr[-2000:]
    assert json.loads((other / "results" / "bench-seed-pytorch-fp32.json").read_text())["benchmarks"]


def test_gpu_reports_goes_past_a_failed_verdict_and_stops_where_pytest_judged_nothing(tmp_path):
    """pytest's status 1 is a verdict that failed (here NaN weights, given as WEIGHTS: the recipe's images refused, in
    the protocol, in the ladder's quick pipeline and in the images stage): the stage records it and goes on. Any other
    status judged nothing (4: no such recipe; 5: a filter that selects no engine; python -m bench's 2: bad input): the
    stage stops with it and marks nothing done, rather than logging the failure as the recipe's verdict."""
    from reference.checkpoints import load_models, write_checkpoints
    from reference.configs import ModelConfig

    models = load_models(ModelConfig.from_name("tiny"), seed=0)
    with torch.no_grad():
        models.uvit.out_blocks[-1].mlp.fc2.weight[0, 0] = float("nan")
    weights, results = write_checkpoints(models, tmp_path / "weights"), tmp_path / "results"

    def run(stage: str, **env: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "SIZE": "tiny", "LIMIT": "1", "RESULTS": str(results), "PYTHON": sys.executable, **env}
        return subprocess.run(["bash", ".ci/gpu-reports", stage], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)  # fmt: skip

    proc = run("protocol", RECIPES="pytorch-fp32 no-such-recipe", WEIGHTS=str(weights))
    assert "protocol pytorch-fp32: images refused" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((results / "bench-seed-pytorch-fp32.json").read_text())["benchmarks"]  # its times stand
    assert proc.returncode == 4 and "protocol no-such-recipe: stopped with exit status 4" in proc.stderr
    nothing = results / "bench-seed-no-such-recipe.json"
    assert not nothing.is_file() or not nothing.stat().st_size
    proc = run("bench", K="test_pipeline and pytorch-fp32", WEIGHTS=str(weights))
    assert proc.returncode == 0 and "bench: images refused" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((results / "bench-ladder.json").read_text())["benchmarks"]
    proc = run("accuracy", COMPONENTS="clip", K="no_such_engine")
    assert proc.returncode == 5 and "accuracy clip: stopped with exit status 5" in proc.stderr, proc.stderr
    assert not (results / "accuracy" / "clip" / "done").exists()
    images = tmp_path / "images"
    proc = run("images", RECIPES="pytorch-fp32 pytorch-fp32", WEIGHTS=str(weights), RESULTS=str(images))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("images pytorch-fp32: images refused") == 1 and "images pytorch-fp32: done" in proc.stdout
    assert list(json.loads((images / "images" / "pytorch-fp32" / "manifest.json").read_text())["nonfinite"])
    proc = run("images", RECIPES="pytorch-fp32", PROMPTS=str(tmp_path / "no-such.tsv"), RESULTS=str(tmp_path / "x"))
    assert proc.returncode == 2 and "images pytorch-fp32: stopped with exit status 2" in proc.stderr, proc.stderr
    proc = run("images", WEIGHTS=str(tmp_path / "no-such-folder"))
    assert proc.returncode == 2 and "WEIGHTS=" in proc.stderr and "no such folder" in proc.stderr, proc.stderr
