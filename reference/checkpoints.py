"""Weights: official checkpoints read strictly, seeded random weights, and synthetic files in the official layout.

A weights folder holds (../shared/SPEC.md section 5):
    uvit_v1.pth              plain U-ViT state dict
    autoencoder_kl.pth       decoder.*, post_quant_conv.* (+ encoder.*, quant_conv.*, unused here)
    caption_decoder.pth      DDP state dict: module.encode_prefix.* (+ decode_prefix, gpt, clip, unused here)
    clip-vit-large-patch14/  a Hugging Face CLIP directory (config.json, weights, tokenizer files)
Checkpoints are untrusted input: they are read with `weights_only=True`, which never runs pickled code.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import CLIPTextModel

from reference.autoencoder import AutoencoderDecoder
from reference.clip import TextEncoder, load_tokenizer
from reference.configs import ModelConfig
from reference.init import INITS, check_init, initialize
from reference.uvit import UViT

log = logging.getLogger(__name__)

UVIT_FILE, AUTOENCODER_FILE, CAPTION_FILE, CLIP_DIR = (
    "uvit_v1.pth",
    "autoencoder_kl.pth",
    "caption_decoder.pth",
    "clip-vit-large-patch14",
)
# What each file holds: (prefix stripped from every key, prefixes our modules read, extras known to be there).
LAYOUT: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    UVIT_FILE: ("", ("",), ()),
    AUTOENCODER_FILE: ("", ("decoder.", "post_quant_conv."), ("encoder.", "quant_conv.")),
    CAPTION_FILE: ("module.", ("encode_prefix.",), ("decode_prefix.", "gpt.", "clip.")),
}


class CheckpointError(ValueError):
    """A weights file that cannot be used as it is; the message names the file and every offending key."""


@dataclass
class Models:
    """The fp32 reference components and a note of where their weights came from."""

    config: ModelConfig
    text_encoder: TextEncoder
    uvit: UViT
    decoder: AutoencoderDecoder
    weights: str
    clip_dir: Path | None = None  # the tokenizer comes from here when real weights are loaded

    def to(self, device: torch.device | str) -> Models:
        for m in (self.text_encoder, self.uvit, self.decoder):
            m.to(device).eval().requires_grad_(False)
        return self


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """torch.load with weights_only=True and mmap, every failure turned into one error that names the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; a weights folder holds {list(LAYOUT)} and {CLIP_DIR}/")
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since torch 1.6; mmap reads no other
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint: torch.save writes a zip archive and this file is not one (a text or "
            "safetensors file, a legacy pickle, or a truncated download); use the official .pth file"
        )
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:  # weights_only refuses every global it does not allow: code, custom classes
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise CheckpointError(
            f"{path}: holds pickled Python objects{f' ({found[1]})' if found else ''} besides tensors; checkpoints are "
            "read as tensors only and their code is never run: re-save it as a plain state dict "
            "(torch.save(model.state_dict(), path))"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or corrupt): {first_line}"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path}: expected a state dict (str -> Tensor), found {type(sd).__name__}")
    return sd


def select(sd: dict[str, Tensor], file: str, module: nn.Module, *, path: Path) -> dict[str, Tensor]:
    """The keys `module` needs, checked against it: missing, unexpected and wrong-shape keys in one error."""
    strip, wanted, extras = LAYOUT[file]
    stripped = {}
    for k, v in sd.items():
        if not k.startswith(strip):
            raise CheckpointError(f"{path}: key {k!r} lacks the {strip!r} prefix of a DDP state dict")
        stripped[k[len(strip) :]] = v
    expected = {k: v.shape for k, v in module.state_dict().items()}
    extra = sorted(k for k in stripped if k.startswith(extras) and not k.startswith(wanted))
    if extra:
        log.debug("%s: ignoring %d keys not used for t2i (%s...)", path, len(extra), extra[0])
    ours = {k: v for k, v in stripped.items() if k not in extra}
    missing = sorted(expected.keys() - ours.keys())
    unexpected = sorted(ours.keys() - expected.keys())
    wrong = [
        f"{strip}{k}: file {tuple(ours[k].shape)} vs model {tuple(expected[k])}"
        for k in sorted(expected.keys() & ours.keys())
        if ours[k].shape != expected[k]
    ]
    problems = [f"missing keys {_listing([strip + k for k in missing])}"] if missing else []
    problems += [f"unexpected keys {_listing([strip + k for k in unexpected])}"] if unexpected else []
    problems += [f"wrong shapes {_listing(wrong, quote=False)}"] if wrong else []
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return {k: v.float() if v.is_floating_point() else v for k, v in ours.items()}


def _listing(items: list[str], *, quote: bool = True, limit: int = 8) -> str:
    """['a', 'b', ... (+N more)]: a mismatched size must not print all 418 keys."""
    shown = [repr(i) if quote else i for i in items[:limit]]
    more = [f"... (+{len(items) - limit} more)"] if len(items) > limit else []
    return "[" + ", ".join(shown + more) + "]"


def _load_into(file: str, module: nn.Module, folder: Path) -> nn.Module:
    path = folder / file
    module.load_state_dict(select(read_state_dict(path), file, module, path=path), strict=True, assign=True)
    return module


def load_clip(folder: Path, cfg: ModelConfig) -> CLIPTextModel:
    clip_dir = folder / CLIP_DIR
    if not (clip_dir / "config.json").is_file():
        raise FileNotFoundError(f"{clip_dir}: no Hugging Face CLIP directory (config.json missing)")
    model = CLIPTextModel.from_pretrained(
        str(clip_dir), local_files_only=True, torch_dtype=torch.float32, attn_implementation="eager"
    )
    got = (model.config.vocab_size, model.config.hidden_size, model.config.num_hidden_layers)
    want = (cfg.clip.vocab_size, cfg.clip.width, cfg.clip.layers)
    if got != want:
        raise CheckpointError(f"{clip_dir}: (vocab, width, layers) {got} does not match the {cfg.name!r} size {want}")
    return model


def load_models(cfg: ModelConfig, *, weights: Path | None = None, seed: int = 0, init: str = INITS[0]) -> Models:
    """The reference models on the CPU in fp32: from `weights` if given, else seeded random weights of the `init`
    initialisation (reference/init.py)."""
    if weights is None:
        check_init(init)
        g = torch.Generator().manual_seed(seed)
        text_encoder = TextEncoder.from_config(cfg.clip, text_dim=cfg.uvit.text_dim)
        uvit, decoder = UViT(cfg.uvit), AutoencoderDecoder(cfg.autoencoder)
        for m in (text_encoder, uvit, decoder):
            initialize(m, init, g)
        return Models(cfg, text_encoder, uvit, decoder, weights=random_label(init, seed)).to("cpu")
    folder = Path(weights)
    if not folder.is_dir():
        raise FileNotFoundError(f"weights folder {folder} does not exist")
    with torch.device("meta"):
        uvit, decoder = UViT(cfg.uvit), AutoencoderDecoder(cfg.autoencoder)
        caption = nn.ModuleDict({"encode_prefix": nn.Linear(cfg.clip.width, cfg.uvit.text_dim)})
    _load_into(UVIT_FILE, uvit, folder)
    _load_into(AUTOENCODER_FILE, decoder, folder)
    _load_into(CAPTION_FILE, caption, folder)
    text_encoder = TextEncoder(load_clip(folder, cfg), caption["encode_prefix"])
    return Models(cfg, text_encoder, uvit, decoder, weights=str(folder.resolve()), clip_dir=folder / CLIP_DIR).to("cpu")


def random_label(init: str, seed: int) -> str:
    """How reports name seeded random weights: the initialisation and the seed."""
    return f"random ({init} init, seed {seed})"


def write_checkpoints(models: Models, folder: Path, *, overwrite: bool = False) -> Path:
    """Write `models` in the official file layout (with the known extras), e.g. to smoke-test a loader."""
    folder = Path(folder)
    targets = [folder / f for f in LAYOUT] + [folder / CLIP_DIR]
    if not overwrite and any(t.exists() for t in targets):
        raise FileExistsError(f"{folder} already holds weights; pass overwrite=True to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(models.uvit.state_dict(), folder / UVIT_FILE)
    C = models.config.autoencoder.z_channels
    ae = {**models.decoder.state_dict(), "encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}
    ae["quant_conv.weight"] = torch.zeros(2 * C, 2 * C, 1, 1)
    torch.save(ae, folder / AUTOENCODER_FILE)
    prefix = models.text_encoder.encode_prefix
    caption = {"module.encode_prefix.weight": prefix.weight, "module.encode_prefix.bias": prefix.bias}
    caption["module.decode_prefix.weight"] = torch.zeros(prefix.in_features, prefix.out_features)
    caption["module.gpt.lm_head.weight"] = torch.zeros(8, 8)
    torch.save(caption, folder / CAPTION_FILE)
    models.text_encoder.clip.save_pretrained(str(folder / CLIP_DIR))
    load_tokenizer().save_pretrained(str(folder / CLIP_DIR))
    return folder
