"""Image-quality results (`python -m bench quality`) -> reports/pd.md and a side-by-side grid PNG per engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from reports.common import check_writable, env_header

METRICS = ["pd", "mean_abs_px", "max_abs_px", "psnr_db", "ssim", "latents_rel_l2"]
PD_FAIL = 12.0  # the original contest failed an image above this PD


def label(comparison: dict) -> str:
    m = comparison.get("candidate_manifest", {})
    return m.get("label") or Path(comparison["candidate"]).name


def tables(data: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per image (rows) x (engine, metric) columns, and the per-engine means."""
    frames = []
    for c in data["comparisons"]:
        df = pd.DataFrame(c["rows"]).set_index("image")
        df = df[[m for m in METRICS if m in df.columns]]
        df.columns = pd.MultiIndex.from_product([[label(c)], df.columns])
        frames.append(df)
    per_image = pd.concat(frames, axis=1)
    means = per_image.mean().unstack()
    maxima = per_image.max().unstack()
    means["max pd" if "pd" in means else "max mean_abs_px"] = maxima["pd" if "pd" in maxima else "mean_abs_px"]
    return per_image, means


def grid(comparison: dict, path: Path, *, rows: int = 6, side: int = 256) -> Path:
    """Reference | engine | 4x absolute difference, one row per image."""
    items = comparison["rows"][:rows]
    canvas = Image.new("RGB", (3 * side, len(items) * side), "white")
    for i, r in enumerate(items):
        ref = Image.open(r["reference_png"]).convert("RGB").resize((side, side))
        img = Image.open(r["png"]).convert("RGB").resize((side, side))
        diff = np.clip(np.abs(np.asarray(img, np.int16) - np.asarray(ref, np.int16)) * 4, 0, 255).astype(np.uint8)
        for j, tile in enumerate([ref, img, Image.fromarray(diff)]):
            canvas.paste(tile, (j * side, i * side))
        ImageDraw.Draw(canvas).text((4, i * side + 4), r["image"], fill="white")
    canvas.save(path)
    return path


def to_markdown(data: dict, images: list[str]) -> str:
    per_image, means = tables(data)
    has_pd = any(c.get("pd_weights") for c in data["comparisons"])
    fmt = lambda df: df.map(lambda v: "-" if pd.isna(v) else f"{v:.4g}")  # noqa: E731
    parts = [env_header("Image quality against the strict-fp32 reference", data["env"])]
    ref = data["comparisons"][0]["reference_manifest"] if data["comparisons"] else {}
    parts.append(
        f"Reference images: `{data['comparisons'][0]['reference']}` ({ref.get('label', '')}; noise order "
        f"{ref.get('noise_order', '?')}, uint8 {ref.get('rounding', '?')}). Pixel metrics on the PNGs; PD on the "
        "JPEGs (quality 95).\n"
    )
    if has_pd:
        parts.append(f"PD: pytorch-fid Inception pool3 L2 distance (SPEC section 7); the contest failed an image above "
                     f"{PD_FAIL:g}. The seed reported a mean PD of 6.883 with real weights.\n")  # fmt: skip
    else:
        parts.append("PD: **not computed: Inception weights missing** (pass `--inception "
                     "pt_inception-2015-12-05-6726825d.pth` to `python -m bench quality`).\n")  # fmt: skip
    parts.append("## Means per engine\n\n" + fmt(means).to_markdown() + "\n")
    parts.append("## Per (prompt, seed)\n\n" + fmt(per_image).to_markdown() + "\n")
    parts += [f"## {name}\n\n![reference | engine | 4x difference]({name})\n" for name in images]
    return "\n".join(parts)


def write_report(paths: list[Path], out: Path, *, overwrite: bool = False) -> Path:
    if len(paths) != 1:
        raise ValueError("the image-quality report reads one results file from `python -m bench quality`")
    data = json.loads(Path(paths[0]).read_text())
    out = check_writable(out, overwrite=overwrite)
    images = []
    for c in data["comparisons"]:
        png = check_writable(out.with_name(f"{out.stem}-{Path(c['candidate']).name}.png"), overwrite=overwrite)
        images.append(grid(c, png).name)
    out.write_text(to_markdown(data, images))
    return out
