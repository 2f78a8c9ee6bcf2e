"""Image quality of an engine's images against the fp32 reference's, per (prompt, seed) and on average.

PD (SPEC section 7): L2 distance of pytorch-fid's Inception pool3 features of the two JPEGs, when the Inception
weights are supplied; lower is better and the original contest failed an image above 12. Always: mean and max
absolute pixel difference, PSNR and SSIM on the lossless PNGs, and the final latents' relative L2 error.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from bench.inception import load_inception
from reference.tolerances import IMAGE_THRESHOLDS
from reports.common import check_one_run


def read_image(path: Path) -> Tensor:
    """(3, H, W) float in [0, 255]."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)


def psnr(a: Tensor, b: Tensor) -> float:
    mse = F.mse_loss(a.double(), b.double()).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. (2004): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, range 255; mean over pixels and RGB."""
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - window // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum()).repeat(3, 1, 1, 1)  # (3, 1, 1, w), one per channel
    # the Gaussian window is separable: a row pass, then a column pass, is the 2-D window at 2w taps a pixel, not w^2
    # (5x fewer at w = 11); valid region only, like skimage's default crop
    blur = lambda x: F.conv2d(F.conv2d(x, g, groups=3), g.transpose(2, 3), groups=3)  # noqa: E731
    x, y = a.double()[None], b.double()[None]
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean().item()


def rel_l2(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def pair_metrics(ref_png: Path, png: Path, ref_latents: Path, latents: Path) -> dict[str, float]:
    a, b = read_image(png), read_image(ref_png)
    diff = (a - b).abs()
    la, lb = torch.load(latents, weights_only=True), torch.load(ref_latents, weights_only=True)
    return {"mean_abs_px": diff.mean().item(), "max_abs_px": diff.max().item(), "psnr_db": psnr(a, b),
            "ssim": ssim(a, b), "latents_rel_l2": rel_l2(la, lb)}  # fmt: skip


@torch.no_grad()
def pd_scores(ref_jpgs: list[Path], jpgs: list[Path], inception, *, device: torch.device) -> list[float]:
    feats = lambda paths: torch.cat([inception(read_image(p)[None].to(device) / 255) for p in paths])  # noqa: E731
    return (feats(jpgs).double() - feats(ref_jpgs).double()).norm(dim=1).tolist()


def _manifest(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def jpeg_digest(folder: Path) -> str | None:
    """sha256 of a folder's JPEGs, names and bytes in name order; None where it holds none. The JPEGs travel with
    every results folder where the PNGs may not: two folders of the same digest hold the same images."""
    jpgs = sorted(Path(folder).glob("*.jpg"))
    if not jpgs:
        return None
    h = hashlib.sha256()
    for path in jpgs:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _stems(folder: Path) -> set[str]:
    return {p.name.split(".")[0] for p in Path(folder).glob("*") if p.suffix in (".png", ".jpg")}


def compare_folders(
    reference: Path,
    candidate: Path,
    *,
    inception_weights: Path | None,
    device: torch.device,
    pixels: dict[str, dict] | None = None,
) -> dict:
    """Every image of the reference folder, compared with the candidate's of the same name; the manifests say what
    made them. Pixel metrics come from the PNGs where both folders hold them, else from `pixels` (image -> metrics,
    measured where the PNGs were: a GPU run returns its JPEGs only); PD from the JPEGs. An image the candidate's
    manifest lists as refused (NaN or Inf) counts as failed."""
    reference, candidate = Path(reference), Path(candidate)
    refused = _manifest(candidate).get("nonfinite", {})
    shared = sorted(_stems(reference) & _stems(candidate))
    if not shared and not refused:
        raise FileNotFoundError(f"{candidate} and {reference} share no image (expected NN_SEED.png/.jpg in both)")
    rows = [{"image": stem, "nonfinite": why} for stem, why in sorted(refused.items())]
    for stem in shared:
        ref, cand = reference / f"{stem}.png", candidate / f"{stem}.png"
        row = {"image": stem, "png": str(cand), "reference_png": str(ref)}
        if ref.is_file() and cand.is_file():
            latents = (ref.with_name(stem + ".latents.pt"), cand.with_name(stem + ".latents.pt"))
            row.update(pair_metrics(ref, cand, *latents))
        elif pixels is not None and stem in pixels:
            row.update(pixels[stem])
        rows.append(row)
    scored = [r for r in rows if "nonfinite" not in r and (reference / f"{r['image']}.jpg").is_file()]
    if inception_weights is not None and scored:
        net = load_inception(inception_weights).to(device)
        scores = pd_scores([reference / f"{r['image']}.jpg" for r in scored],
                           [candidate / f"{r['image']}.jpg" for r in scored], net, device=device)  # fmt: skip
        for r, s in zip(scored, scores, strict=True):
            r["pd"] = s
    missing = sorted(_stems(reference) - _stems(candidate) - set(refused))
    judged = verdict(rows, missing=missing)
    return {
        "reference": str(reference), "candidate": str(candidate), "rows": rows, "missing": missing,
        "pd_weights": str(inception_weights) if inception_weights else None,
        "reference_manifest": _manifest(reference), "candidate_manifest": _manifest(candidate),
        "reference_sha256": jpeg_digest(reference),
        **judged,
    }  # fmt: skip


def one_run(quality_jsons: list[Path], *, noted: str) -> tuple[list[dict], dict]:
    """The comparisons of several `bench quality` files of one run (split over machine calls, or its images made on
    several machines), and the env of the oldest, with the dates of all under `noted`. They must share commit, GPU,
    torch, weights and size and the very same reference images, and score each candidate once; anything else is an
    error naming the file and what differs."""
    data = sorted(((Path(p), json.loads(Path(p).read_text())) for p in quality_jsons),
                  key=lambda d: d[1]["env"].get("date", ""))  # fmt: skip
    first, env = data[0][0], data[0][1]["env"]
    check_one_run([(path, d["env"]) for path, d in data], fix="score each run apart")
    comparisons: list[dict] = []
    reference, scored = None, set()
    for path, d in data:
        for c in d["comparisons"]:
            made = _identity(c["reference_manifest"])
            if reference is not None and made != reference:
                raise ValueError(f"{path}: its reference images are not {first}'s (another recipe, weights or "
                                 "prompts); score each against its own reference")  # fmt: skip
            reference, name = made, Path(c["candidate"]).name
            if name in scored:
                raise ValueError(f"{name} is scored in more than one of {', '.join(str(p) for p, _ in data)}; "
                                 "give each candidate's metrics once")  # fmt: skip
            comparisons.append(c)
            scored.add(name)
    if len(data) > 1:
        env = {**env, noted: ", ".join(d["env"].get("date", "?") for _, d in data)}
    return comparisons, env


def pixel_metrics(quality_jsons: list[Path]) -> tuple[dict[str, dict[str, dict]], dict]:
    """candidate folder's name -> image -> its pixel and latent metrics, from `bench quality` results made where the
    PNGs were (PD is measured again from the JPEGs), and the env of the run that made them (`one_run`)."""
    comparisons, env = one_run(quality_jsons, noted="pixel metrics measured")
    keep = ("mean_abs_px", "max_abs_px", "psnr_db", "ssim", "latents_rel_l2")
    metrics = {Path(c["candidate"]).name: {r["image"]: {k: r[k] for k in keep if k in r} for r in c["rows"]}
               for c in comparisons}  # fmt: skip
    return metrics, env


def _identity(manifest: dict) -> tuple:
    """What makes a folder's images what they are: its engines, weights, size, noise and rounding, and its pairs."""
    images = tuple((i.get("index"), i.get("seed"), i.get("prompt"), i.get("file")) for i in manifest.get("images", []))
    return tuple(json.dumps(manifest.get(k), sort_keys=True) for k in
                 ("engines", "weights", "size", "noise_order", "rounding")) + images  # fmt: skip


def verdict(rows: list[dict], *, missing: list[str] = ()) -> dict:
    """Each threshold of reference/tolerances.py (IMAGE_THRESHOLDS) against its aggregate over the images, and the
    verdict: "pass" only when every one holds and nothing is missing (no PD: "incomplete"), "FAIL" when any fails
    or any image was refused as NaN/Inf; "incomplete" too where images of the reference are `missing`."""
    values = {"pd_mean": [r["pd"] for r in rows if "pd" in r]}
    refused = [r["image"] for r in rows if "nonfinite" in r]
    checks = {"finite": {"aggregate": "count", "op": "<=", "threshold": 0, "value": len(refused),
                         "passed": not refused}}  # fmt: skip
    for name, (aggregate, op, limit) in IMAGE_THRESHOLDS.items():
        xs = values.get(name, [r[name] for r in rows if name in r])
        if not xs:
            checks[name] = {"aggregate": aggregate, "op": op, "threshold": limit, "value": None, "passed": None}
            continue
        value = {"max": max, "min": min, "mean": statistics.fmean}[aggregate](xs)
        passed = not math.isnan(value) and (value <= limit if op == "<=" else value >= limit)  # PSNR inf: identical
        checks[name] = {"aggregate": aggregate, "op": op, "threshold": limit, "value": value, "passed": passed}
    outcomes = [c["passed"] for c in checks.values()]
    # a verdict over fewer images than the reference's (`missing`) is no verdict
    status = "FAIL" if False in outcomes else "incomplete" if None in outcomes or missing else "pass"
    return {"checks": checks, "verdict": status, "images": len(rows)}
