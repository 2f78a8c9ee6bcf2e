"""Image quality of an engine's images against the fp32 reference's, per (prompt, seed) and on average.

PD (SPEC section 7): L2 distance of pytorch-fid's Inception pool3 features of the two JPEGs, when the Inception
weights are supplied; lower is better and the original contest failed an image above 12. Always: mean and max
absolute pixel difference, PSNR and SSIM on the lossless PNGs, and the final latents' relative L2 error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from bench.inception import load_inception


def read_image(path: Path) -> Tensor:
    """(3, H, W) float in [0, 255]."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"), dtype=np.float32)).permute(2, 0, 1)


def psnr(a: Tensor, b: Tensor) -> float:
    mse = F.mse_loss(a.double(), b.double()).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5) -> float:
    """Wang et al. (2004): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, range 255; mean over pixels and RGB."""
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - window // 2) ** 2) / (2 * sigma**2))
    g = (g / g.sum())[None, :]
    kernel = (g.T @ g)[None, None].repeat(3, 1, 1, 1)  # (3, 1, w, w), one per channel
    blur = lambda x: F.conv2d(x, kernel, groups=3)  # noqa: E731  valid region only, like skimage's default crop
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


def compare_folders(reference: Path, candidate: Path, *, inception_weights: Path | None, device: torch.device) -> dict:
    """Every image the two folders share (by file name), compared; the manifests say what made them."""
    ref_pngs = {p.name: p for p in Path(reference).glob("*.png")}
    pngs = sorted(p for p in Path(candidate).glob("*.png") if p.name in ref_pngs)
    if not pngs:
        raise FileNotFoundError(f"{candidate} and {reference} share no image (expected NN_SEED.png files in both)")
    rows = []
    for png in pngs:
        ref = ref_pngs[png.name]
        stem = png.name[: -len(".png")]
        latents = (ref.with_name(stem + ".latents.pt"), png.with_name(stem + ".latents.pt"))
        rows.append({"image": stem, "png": str(png), "reference_png": str(ref), **pair_metrics(ref, png, *latents)})
    if inception_weights is not None:
        net = load_inception(inception_weights).to(device)
        scores = pd_scores([Path(r["reference_png"]).with_suffix(".jpg") for r in rows],
                           [Path(r["png"]).with_suffix(".jpg") for r in rows], net, device=device)  # fmt: skip
        for r, s in zip(rows, scores, strict=True):
            r["pd"] = s
    return {
        "reference": str(reference), "candidate": str(candidate), "rows": rows,
        "pd_weights": str(inception_weights) if inception_weights else None,
        "reference_manifest": _manifest(reference), "candidate_manifest": _manifest(candidate),
    }  # fmt: skip
