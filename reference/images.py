"""Writing images: one (prompt, seed) at a time, or the whole reference set of prompts.tsv into a folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from reference.pipeline import NonFiniteOutput
from reference.prompts import Prompt

JPEG_QUALITY = 95  # OpenCV's imwrite default, which the seed's PD images were written with


def image_stem(p: Prompt) -> str:
    return f"{p.index:02d}_{p.seed}"


def outputs_for(folder: Path, p: Prompt) -> list[Path]:
    stem = folder / image_stem(p)
    return [stem.with_suffix(".png"), stem.with_suffix(".jpg"), stem.with_suffix(".latents.pt")]


def check_free(folder: Path, prompts: Sequence[Prompt], *, overwrite: bool) -> None:
    """Refuse, before any work, an output folder that cannot be written, two pairs that would write the same files,
    and files a previous run wrote unless asked to replace them."""
    folder = Path(folder)
    check_writable_folder(folder)
    stems = [image_stem(p) for p in prompts]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise ValueError(f"(index, seed) pairs given twice would write one image over the other: {twice}")
    targets = [p for pr in prompts for p in outputs_for(folder, pr)] + [folder / "manifest.json"]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{len(existing)} output files already exist (e.g. {existing[0]}); pass --overwrite to replace them"
        )


def check_writable_folder(folder: Path) -> None:
    """The folder, or the nearest part of its path that exists, is a folder this process may write into."""
    here = Path(folder)
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise NotADirectoryError(f"output folder {folder}: {here} is a file, not a folder; choose another --out")
    if not os.access(here, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {folder}: {here} is not writable; choose another --out")


def save_image(image: torch.Tensor, path: Path) -> None:
    """(H, W, 3) uint8 -> PNG, or JPEG at quality 95 when the suffix is .jpg."""
    img = Image.fromarray(image.numpy())
    img.save(path, quality=JPEG_QUALITY) if path.suffix == ".jpg" else img.save(path)


def save_result(folder: Path, p: Prompt, result) -> Path:
    """One pipeline `Result` as PNG, JPEG (quality 95, what PD is computed on) and final latents; returns the PNG.
    A result with NaN or Inf is refused (reference.pipeline.NonFiniteOutput), naming the stage."""
    result.check_finite()
    png, jpg, latents = outputs_for(Path(folder), p)
    save_image(result.image, png)
    save_image(result.image, jpg)
    torch.save(result.latents, latents)
    return png


def image_entry(p: Prompt, png: Path, seconds: float | None) -> dict:
    return {"index": p.index, "seed": p.seed, "prompt": p.prompt, "file": png.name, "seconds": seconds}


def write_manifest(folder: Path, metadata: dict, result, entries: list[dict], refused: dict[str, str]) -> None:
    """`manifest.json`: what made the images (`metadata`), how (noise order, rounding), each image and its seconds."""
    meta = {**metadata, "noise_order": result.noise_order, "rounding": result.rounding, "images": entries,
            "nonfinite": refused}  # fmt: skip
    (Path(folder) / "manifest.json").write_text(json.dumps(meta, indent=2, default=str))


def save_results(folder: Path, made: Iterable[tuple[Prompt, object, float | None]], *, metadata: dict) -> Path:
    """Each (prompt, pipeline `Result`, seconds) of `made` as `save_result` writes it, then `manifest.json` with
    `metadata`. An image with NaN or Inf is a verdict on that image: listed in the manifest, the others still written,
    and raised once all are done. What `bench quality` compares, whether `bench references` or a benchmark made it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, refused, result = [], {}, None
    for p, result, seconds in made:
        try:
            png = save_result(folder, p, result)
        except NonFiniteOutput as e:
            refused[image_stem(p)] = str(e)
            continue
        entries.append(image_entry(p, png, seconds))
    write_manifest(folder, metadata, result, entries, refused)
    if refused:
        first = next(iter(refused))
        raise NonFiniteOutput(f"{len(refused)} of {len(refused) + len(entries)} images refused ({first}: "
                              f"{refused[first]}); {folder / 'manifest.json'} lists them")  # fmt: skip
    return folder


def write_images(
    generate: Callable[[str, int], object],
    prompts: Sequence[Prompt],
    folder: Path,
    *,
    metadata: dict,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Run `generate(prompt, seed)` (returning a pipeline `Result`) for each pair; write PNG, JPEG and final latents,
    and `manifest.json` with `metadata` and per-image seconds. Refuses to touch existing files unless `overwrite`."""
    if not prompts:
        raise ValueError("no prompts given: nothing to generate")
    check_free(Path(folder), prompts, overwrite=overwrite)

    def made():
        for p in tqdm(prompts, desc=f"images -> {folder}", disable=not progress):
            t0 = time.perf_counter()
            result = generate(p.prompt, p.seed)  # synchronises: the image comes back to the CPU
            yield p, result, time.perf_counter() - t0

    return save_results(folder, made(), metadata=metadata)
