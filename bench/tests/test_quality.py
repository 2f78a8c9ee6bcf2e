from __future__ import annotations

import math

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
