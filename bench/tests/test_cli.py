"""The command lines: help that says what to do, and bad input answered with one clear line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def bench(pytester):
    def run(*args):
        return pytester.run(sys.executable, "-m", "bench", *args)

    return run


def test_generate_help_lists_the_options(bench):
    result = bench("generate", "--help")
    result.stdout.fnmatch_lines(["*--backend NAME*", "*--precision {fp32,fp16,bf16,fp8}*", "*--weights DIR*"])
    assert result.ret == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "--backend", "tvm"], "*unknown backend 'tvm'; choose from*"),
        (["generate", "--weights", "/nonexistent"], "*weights folder /nonexistent does not exist*"),
        (["generate", "--precision", "fp16"], "*the reference pipeline is strict fp32*"),
        (["references", "--out", "x", "--prompts", "/nope.tsv"], "*prompts file /nope.tsv does not exist*"),
        (["quality", "--reference", "a", "--candidates", "b"], "*share no image*"),
        (["generate", "--recipe", "fast", "--backend", "eager"], "*--recipe chooses every engine itself*"),
        (["profile", "--component", "uvit", "--option", "sdpa"], "*is not KEY=VALUE*"),
        (["profile", "--component", "uvit", "--recipe", "fast", "--precision", "fp16"], "*--recipe chooses the*"),
        (["build"], "*the reference is not built; pick --recipe or an engine --backend*"),
        (["build", "--backend", "eager", "--components", "vae"], "*unknown components*'vae'*; choose from*"),
    ],
    ids=[
        "backend",
        "weights",
        "reference-fp16",
        "prompts",
        "quality",
        "recipe-and-backend",
        "profile-option",
        "profile-recipe-and-precision",
        "build",
        "build-component",
    ],  # fmt: skip
)
def test_bad_input_is_one_clear_line(bench, args, message):
    result = bench(*args)
    assert result.ret == 2
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--backends", "tvm", "*unknown backend ?'tvm'?; choose from*"),
        ("--precisions", "int4", "*unknown precision ?'int4'?; choose from*"),
        ("--size", "huge", "*unknown size ?'huge'?; choose from*"),
        ("--weights", "/nonexistent", "*weights folder '/nonexistent' does not exist*"),
        ("--bench-steps", "20,0", "*expected step counts of at least 1, comma-separated, got '20,0'*"),
        ("--bench-batch", "4,-1", "*expected batch sizes of at least 1, comma-separated, got '4,-1'*"),
        ("--bench-recipes", "fast,fastest", "*unknown recipe ?'fastest'?; choose from ?'pytorch-fp32'*"),
        ("--bench-engine", "uvit/inductor/fp16+long_skip=split", "*option 'long_skip' does not apply to uvit on*"),
    ],
    ids=["backends", "precisions", "size", "weights", "bench-steps", "bench-batch", "bench-recipes", "bench-engine"],
)
def test_pytest_options_are_validated_at_parse_time(pytester, option, value, message):
    test_file = Path(__file__).with_name("test_flops.py")
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(test_file), option, value)
    result.stderr.fnmatch_lines([message])
    assert result.ret == 4  # usage error: nothing ran


def test_batches_and_the_seed_protocol_are_refused_together(pytester):
    test_file = Path(__file__).with_name("test_flops.py")
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(test_file),
                          "--bench-protocol", "seed", "--bench-batch", "1,4")  # fmt: skip
    result.stderr.fnmatch_lines(["*--bench-batch above 1 runs with the quick protocol*"])
    assert result.ret == 4  # usage error: nothing ran


def test_bench_recipes_keeps_those_recipes_pipelines_and_every_other_benchmark(pytester):
    bench_dir = Path(__file__).resolve().parents[1]
    args = [str(bench_dir / "bench_pipeline.py"), str(bench_dir / "bench_components.py")]
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", *args,
                          "--bench-recipes", "fast,pytorch-fp32", "--bench-batch", "1,2")  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    pipelines = sorted(line.split("::")[1] for line in result.stdout.lines if "::test_pipeline[" in line)
    assert pipelines == ["test_pipeline[batch1-fast]", "test_pipeline[batch1-pytorch-fp32]",
                         "test_pipeline[batch2-fast]", "test_pipeline[batch2-pytorch-fp32]"]  # fmt: skip
    assert any("::test_component[" in line for line in result.stdout.lines)  # not a pipeline: kept


def test_bench_engine_times_the_engines_named_and_no_set(pytester):
    bench_dir = Path(__file__).resolve().parents[1]
    ids = ["uvit/eager/fp32+attention=sdpa", "decoder/inductor/fp16+channels_last=True,groupnorm=stats"]
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                          str(bench_dir / "bench_components.py"), "--bench-set", "none",
                          *(a for i in ids for a in ("--bench-engine", i)))  # fmt: skip
    assert result.ret == 0, result.stdout.str()
    cases = [line.split("::")[1] for line in result.stdout.lines if "::test_component[" in line]
    assert cases == [f"test_component[{i}]" for i in ids]


def test_pytest_help_documents_the_options(pytester):
    test_file = Path(__file__).with_name("test_flops.py")
    result = pytester.run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(test_file), "--help")
    result.stdout.fnmatch_lines(["*unidiffuser:*", "*--backends=LIST*", "*--accuracy-report=PATH*", "*Default:*"])


def test_a_recipe_builds_the_pipeline_its_column_describes():
    """`--recipe pytorch-fp32` is the reference through engines (eager fp32, two-call guidance): the same image. Its
    manifest names the recipe, its label and its engines' precisions, as the benchmarks' manifests do."""
    import torch

    from bench.cli import make_pipeline

    reference, _ = make_pipeline(size="tiny", device="cpu")
    recipe, meta = make_pipeline(size="tiny", device="cpu", recipe="pytorch-fp32")
    assert meta["engines"] == {"clip": "clip/eager/fp32", "uvit": "uvit/eager/fp32+guidance=two-calls",
                               "decoder": "decoder/eager/fp32"}  # fmt: skip
    assert (meta["recipe"], meta["label"], meta["precision"]) == ("pytorch-fp32", "PyTorch-FP32 (reference)", "fp32")
    _, baseline = make_pipeline(size="tiny", device="cpu", recipe="pytorch-fp16-baseline", progress=False)
    assert baseline["precision"] == "fp32+fp16"  # CLIP and decoder fp32, the U-ViT under fp16 autocast
    a, b = recipe("A dog adventuring under the sea", 29764), reference("A dog adventuring under the sea", 29764)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.image, b.image)


def test_a_nan_is_a_verdict_never_an_image(bench, tmp_path):
    """A NaN weight in the U-ViT: `generate` exits 1 (a verdict, as pytest's failed tests; 2 is a usage error) naming
    the stage and writes nothing; `references` writes the finite images only and lists the refused ones in its
    manifest."""
    import json

    import torch

    from reference.checkpoints import load_models, write_checkpoints
    from reference.configs import ModelConfig

    models = load_models(ModelConfig.from_name("tiny"), seed=0)
    with torch.no_grad():
        models.uvit.out_blocks[-1].mlp.fc2.weight[0, 0] = float("nan")
    weights = write_checkpoints(models, tmp_path / "weights")
    out = tmp_path / "out"
    result = bench("generate", "--size", "tiny", "--device", "cpu", "--weights", str(weights), "--out", str(out),
                   "--warmup", "0", "--repeat", "1")  # fmt: skip
    assert result.ret == 1 and "Traceback" not in result.stderr.str()
    result.stderr.fnmatch_lines(["error: the uvit stage produced NaN/Inf latents; no image is written from them"])
    assert not out.exists() or not any(out.rglob("*"))
    prompts = tmp_path / "p.tsv"
    prompts.write_text("index\tseed\tprompt\n0\t1\ta cat\n")
    result = bench("references", "--size", "tiny", "--device", "cpu", "--weights", str(weights), "--prompts",
                   str(prompts), "--out", str(out / "refs"))  # fmt: skip
    assert result.ret == 1
    manifest = json.loads((out / "refs" / "manifest.json").read_text())
    assert list(manifest["nonfinite"]) == ["00_1"] and not list((out / "refs").glob("*.png"))
