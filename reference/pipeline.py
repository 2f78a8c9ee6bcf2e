"""Text-to-image: (prompt, seed) -> uint8 image and final latents, in strict fp32 (SPEC sections 1 and 3).

The three stages are plain callables so that engines can stand in for them with the same keyword inputs:
    clip(input_ids)                                        -> text condition  (B, 77, 64)
    step(x, text, text_noise, t_model, alpha, sigma)       -> D(x, t)         (B, 16896)
    decoder(z)                                             -> image in ~[-1,1] (B, 3, 512, 512)
or, instead of `step`, the whole solver loop (engines.sampler):
    sampler(x, text, text_noise)                           -> x at t_end      (B, 16896)
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from reference import dpm_solver
from reference.autoencoder import to_uint8
from reference.checkpoints import Models
from reference.clip import PromptTruncated, load_tokenizer, tokenize, truncation
from reference.configs import UViTConfig
from reference.uvit import UViT, upcast

NOISE_ORDERS = ("seed", "upstream")
GUIDANCE_SCALE = 7.0  # configs/sample_unidiffuser_v1.py: sample.scale
DATA_TYPE_T2I = 1  # configs/sample_unidiffuser_v1.py: data_type


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """True fp32 matmuls and convolutions (no TF32) while the reference runs; the caller's settings come back after."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def split(x: Tensor, cfg: UViTConfig) -> tuple[Tensor, Tensor]:
    """(B, 16896) -> z (B, 4, 64, 64), clip_img (B, 1, 512)."""
    z, clip_img = x.split([cfg.in_chans * cfg.img_size**2, cfg.clip_img_dim], dim=1)
    return z.reshape(-1, cfg.in_chans, cfg.img_size, cfg.img_size), clip_img.reshape(-1, 1, cfg.clip_img_dim)


def combine(z: Tensor, clip_img: Tensor) -> Tensor:
    return torch.cat([z.flatten(1), clip_img.flatten(1)], dim=1)  # (B, 16896)


@dataclass(frozen=True)
class Noise:
    z: Tensor  # (B, 4, 64, 64)
    clip_img: Tensor  # (B, 1, 512)
    text: Tensor  # (calls, B, 77, 64): the fresh uncond text of each model call
    order: str


NOISE_BATCH_DIMS = (("z", 0), ("clip_img", 0), ("text", 1))  # each draw's batch axis


def draw_noise(
    cfg: UViTConfig, seed: int, *, device: torch.device, calls: int, batch: int = 1, order: str = "seed"
) -> Noise:
    """The random draws of one image from a generator of `device` seeded with `seed`.

    `seed` order (the seed project): z, clip_img, then one text noise per model call. `upstream` order
    (sample_multi_v1.py) draws one unused (B, 77, 64) tensor after clip_img. Drawing all call noises up front
    gives the same numbers as drawing them between calls, because nothing else draws from this generator.
    """
    if order not in NOISE_ORDERS:
        raise ValueError(f"unknown noise order {order!r}; choose from {list(NOISE_ORDERS)}")
    g = torch.Generator(device).manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, device=device)  # noqa: E731
    z = randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size)
    clip_img = randn(batch, 1, cfg.clip_img_dim)
    if order == "upstream":
        randn(batch, cfg.num_text_tokens, cfg.text_dim)
    text = torch.stack([randn(batch, cfg.num_text_tokens, cfg.text_dim) for _ in range(calls)])
    return Noise(z, clip_img, text, order)


class GuidedStep(nn.Module):
    """D(x, t) under true-uncond guidance: eps = cond + scale * (cond - uncond), D = (x - sigma eps) / alpha.

    `batched=False` makes the two U-ViT calls one after the other, as upstream; `batched=True` merges them into one
    batch-2 call, as the seed's engines did.
    """

    def __init__(self, uvit: UViT, *, batched: bool = False, scale: float = GUIDANCE_SCALE):
        super().__init__()
        self.uvit, self.batched, self.scale = uvit, batched, scale

    def forward(
        self, x: Tensor, text: Tensor, text_noise: Tensor, t_model: Tensor, alpha: Tensor, sigma: Tensor
    ) -> Tensor:
        # x (B, X); text, text_noise (B, 77, T); t_model, alpha, sigma (B,)
        cfg = self.uvit.cfg
        z, clip_img = split(x, cfg)
        B = x.shape[0]
        data_type = torch.full((B,), DATA_TYPE_T2I, dtype=torch.long, device=x.device)
        t_cond = torch.zeros(B, device=x.device)  # clean text
        t_uncond = torch.full((B,), float(dpm_solver.N_TRAIN), device=x.device)  # pure-noise text
        if self.batched:
            out = self.uvit(
                torch.cat([z, z]), torch.cat([clip_img, clip_img]), torch.cat([text, text_noise]),
                torch.cat([t_model, t_model]), torch.cat([t_cond, t_uncond]), torch.cat([data_type, data_type]),
            )  # fmt: skip
            cond, uncond = upcast(combine(out[0], out[1])).chunk(2)
        else:
            cond = upcast(combine(*self.uvit(z, clip_img, text, t_model, t_cond, data_type)[:2]))
            uncond = upcast(combine(*self.uvit(z, clip_img, text_noise, t_model, t_uncond, data_type)[:2]))
        eps = cond + self.scale * (cond - uncond)  # (B, X)
        return (x - sigma[:, None] * eps) / alpha[:, None]


class NonFiniteOutput(ValueError):
    """A stage produced NaN or Inf: a verdict, never an image."""


@dataclass
class Result:
    image: Tensor  # (H, W, 3) uint8 on the CPU
    latents: Tensor  # (B, 4, 64, 64) final z, before decoding
    noise_order: str
    rounding: str
    nonfinite: str | None = None  # the first stage whose output held NaN or Inf: "clip", "uvit" or "decoder"

    def check_finite(self) -> Result:
        """Raise NonFiniteOutput naming the stage, where one produced NaN or Inf."""
        if self.nonfinite:
            what = {"clip": "text condition", "uvit": "latents", "decoder": "pixels"}[self.nonfinite]
            raise NonFiniteOutput(f"the {self.nonfinite} stage produced NaN/Inf {what}; no image is written from them")
        return self


@dataclass
class Pipeline:
    """The reference pipeline; pass `clip`, `step` or `decoder` to run an engine in that stage instead."""

    models: Models
    device: torch.device
    noise_order: str = "seed"
    rounding: str = "truncate"
    clip: Callable[..., Tensor] | None = None
    step: Callable[..., Tensor] | None = None
    decoder: Callable[..., Tensor] | None = None
    sampler: Callable[..., Tensor] | None = None
    plan: dpm_solver.Plan = field(default_factory=dpm_solver.make_plan)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        self.models.to(self.device)
        self.tokenizer = load_tokenizer(self.models.clip_dir)
        ref_step = GuidedStep(self.models.uvit)
        self.clip = self.clip or (lambda *, input_ids: self.models.text_encoder(input_ids))
        self.step = self.step or (lambda **kw: ref_step(**kw))
        self.decoder = self.decoder or (lambda *, z: self.models.decoder(z))
        self._sched = {}

    def _schedule(self, batch: int) -> list[Tensor]:
        """t_model, alpha, sigma on the device, each value repeated per image: call k's are [k B, k B + B)."""
        if batch not in self._sched:
            plan = (self.plan.t_model, self.plan.alpha, self.plan.sigma)
            self._sched[batch] = [v.repeat_interleave(batch).to(self.device) for v in plan]
        return self._sched[batch]

    def __call__(self, prompt: str, seed: int, *, progress: bool = False) -> Result:
        return self._generate([prompt], [seed], progress=progress)[0]

    def batch(self, prompts: Sequence[str], seeds: Sequence[int], *, progress: bool = False) -> list[Result]:
        """One image per (prompt, seed), made together; engines in the stages must have been built for this batch.
        Each image draws its noise from its own seed's generator, so it is the image `self(prompt, seed)` makes, up
        to the kernels' batch-dependent rounding."""
        if len(prompts) != len(seeds) or not prompts:
            raise ValueError(f"a batch needs one seed per prompt: got {len(prompts)} prompts and {len(seeds)} seeds")
        return self._generate(list(prompts), list(seeds), progress=progress)

    def _generate(self, prompts: list[str], seeds: list[int], *, progress: bool) -> list[Result]:
        for prompt in prompts:
            if note := truncation(self.tokenizer, prompt, max_tokens=self.models.config.uvit.num_text_tokens):
                warnings.warn(note, PromptTruncated, stacklevel=3)  # the caller of __call__ or batch
        with torch.no_grad(), strict_fp32():
            return self._run(prompts, seeds, progress=progress)

    def _run(self, prompts: list[str], seeds: list[int], *, progress: bool) -> list[Result]:
        cfg, B = self.models.config.uvit, len(prompts)
        ids = tokenize(self.tokenizer, prompts, max_tokens=cfg.num_text_tokens).to(self.device)  # (B, 77)
        text = self.clip(input_ids=ids)  # (B, 77, T)
        draws = [draw_noise(cfg, s, device=self.device, calls=self.plan.calls, order=self.noise_order) for s in seeds]
        noise = Noise(
            *(torch.cat([getattr(d, f) for d in draws], dim=d) for f, d in NOISE_BATCH_DIMS), self.noise_order
        )
        t_model, alpha, sigma = self._schedule(B)
        bar = tqdm(total=self.plan.calls, desc="DPM-Solver++", disable=not progress, leave=False)

        def data_prediction(x: Tensor, k: int) -> Tensor:
            bar.update()
            at = slice(k * B, k * B + B)
            return self.step(
                x=x, text=text, text_noise=noise.text[k], t_model=t_model[at], alpha=alpha[at], sigma=sigma[at]
            )

        x = combine(noise.z, noise.clip_img)
        if self.sampler is not None:  # the engine runs the same plan (engines.sampler)
            x = self.sampler(x=x, text=text, text_noise=noise.text)
        else:
            x = dpm_solver.sample(data_prediction, x, self.plan)
        bar.close()
        z, _ = split(x, cfg)
        pixels = self.decoder(z=z)
        # each stage's verdict, per image, stays on the device until the images come back: no host sync inside
        finite = torch.stack([t.flatten(1).isfinite().all(1) for t in (text, x, pixels)], dim=1)  # (B, 3)
        images = to_uint8(pixels, rounding=self.rounding).cpu()  # (B, H, W, 3)
        latents = z.float().cpu()
        results = []
        for i, ok in enumerate(finite.tolist()):
            bad = [stage for stage, good in zip(("clip", "uvit", "decoder"), ok, strict=True) if not good]
            # clones: torch.save of a view writes the whole batch's storage
            image, z_i = images[i].clone(), latents[i : i + 1].clone()
            results.append(Result(image, z_i, self.noise_order, self.rounding, nonfinite=bad[0] if bad else None))
        return results
