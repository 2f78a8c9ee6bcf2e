import json

import numpy as np
import pytest
import torch
from PIL import Image

from reference.checkpoints import load_models
from reference.compare import rel_l2
from reference.configs import ModelConfig
from reference.images import write_images
from reference.pipeline import GuidedStep, Pipeline, draw_noise, strict_fp32
from reference.prompts import Prompt, read_prompts

TINY = ModelConfig.from_name("tiny")
PROMPT, SEED = "A dog adventuring under the sea", 29764


@pytest.fixture(scope="module")
def pipe():
    return Pipeline(load_models(TINY, seed=0), device="cpu")


@pytest.fixture(scope="module")
def first(pipe):
    return pipe(PROMPT, SEED)


def test_same_prompt_and_seed_give_a_bit_identical_image(pipe, first):
    again = pipe(PROMPT, SEED)
    assert torch.equal(first.image, again.image) and torch.equal(first.latents, again.latents)


def test_another_seed_gives_another_image(pipe, first):
    assert not torch.equal(pipe(PROMPT, SEED + 1).image, first.image)


def test_another_prompt_gives_another_image(pipe, first):
    assert not torch.equal(pipe("A rabbit amidst the stars", SEED).latents, first.latents)


def test_image_is_uint8_hwc_with_content(first):
    assert first.image.shape == (128, 128, 3) and first.image.dtype == torch.uint8
    assert first.image.float().std() > 5  # not a flat image
    assert first.noise_order == "seed" and first.rounding == "truncate"


def test_noise_orders_differ_only_after_clip_img():
    seed_ = draw_noise(TINY.uvit, 5, device=torch.device("cpu"), calls=3, order="seed")
    up = draw_noise(TINY.uvit, 5, device=torch.device("cpu"), calls=3, order="upstream")
    assert torch.equal(seed_.z, up.z) and torch.equal(seed_.clip_img, up.clip_img)
    assert torch.equal(seed_.text[1], up.text[0])  # upstream's extra draw shifts the call noises by one
    with pytest.raises(ValueError, match="unknown noise order 'numpy'; choose from"):
        draw_noise(TINY.uvit, 5, device=torch.device("cpu"), calls=3, order="numpy")


def test_noise_drawn_up_front_equals_noise_drawn_between_calls():
    g = torch.Generator().manual_seed(7)
    z, c = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 1, 32, generator=g)
    between = [torch.randn(1, 77, 16, generator=g) for _ in range(4)]
    up_front = draw_noise(TINY.uvit, 7, device=torch.device("cpu"), calls=4)
    assert torch.equal(up_front.z, z) and torch.equal(up_front.clip_img, c)
    assert all(torch.equal(up_front.text[i], between[i]) for i in range(4))


def test_batched_guidance_equals_two_calls(pipe):
    uvit = pipe.models.uvit
    g = torch.Generator().manual_seed(0)
    cfg = TINY.uvit
    kw = dict(
        x=torch.randn(1, cfg.x_dim, generator=g),
        text=torch.randn(1, 77, cfg.text_dim, generator=g),
        text_noise=torch.randn(1, 77, cfg.text_dim, generator=g),
        t_model=torch.tensor([980.02]),
        alpha=torch.tensor([0.1]),
        sigma=torch.tensor([0.99]),
    )
    with torch.no_grad():
        batched, two = GuidedStep(uvit, batched=True)(**kw), GuidedStep(uvit)(**kw)
    # fp32 rounding of differently shaped GEMMs only: a swapped cond/uncond half moves D by far more than this
    assert rel_l2(batched, two) < 2e-5


def test_guidance_uses_the_text_noise(pipe):
    """With scale 7 the uncond branch matters: changing only the text noise changes D."""
    cfg = TINY.uvit
    x = torch.randn(1, cfg.x_dim)
    text = torch.randn(1, 77, cfg.text_dim)
    common = dict(x=x, text=text, t_model=torch.tensor([500.0]), alpha=torch.tensor([0.5]), sigma=torch.tensor([0.8]))
    step = GuidedStep(pipe.models.uvit)
    with torch.no_grad():
        a = step(text_noise=torch.zeros_like(text), **common)
        b = step(text_noise=torch.ones_like(text), **common)
    assert not torch.allclose(a, b)


def test_strict_fp32_restores_the_callers_settings():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    matmul.fp32_precision = "tf32"
    try:
        with strict_fp32():
            assert matmul.fp32_precision == "ieee" and conv.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


def test_write_images_writes_real_pngs_and_refuses_to_overwrite(pipe, tmp_path):
    prompts = [Prompt(0, SEED, PROMPT), Prompt(1, 1234, "A rabbit floating in the galaxy")]
    folder = write_images(pipe, prompts, tmp_path / "refs", metadata={"size": "tiny"}, progress=False)
    png = Image.open(folder / "00_29764.png")
    assert png.size == (128, 128) and png.mode == "RGB"
    assert torch.equal(torch.from_numpy(np.array(png)), pipe(PROMPT, SEED).image)
    assert Image.open(folder / "01_1234.jpg").format == "JPEG"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [e["seed"] for e in manifest["images"]] == [SEED, 1234] and manifest["noise_order"] == "seed"
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_images(pipe, prompts, folder, metadata={}, progress=False)
    write_images(pipe, prompts[:1], folder, metadata={}, overwrite=True, progress=False)


def test_read_prompts_validates(tmp_path):
    good = tmp_path / "p.tsv"
    good.write_text("index\tseed\tprompt\n0\t29764\tA dog\n1\t12\tA cat\n")
    assert read_prompts(good) == [Prompt(0, 29764, "A dog"), Prompt(1, 12, "A cat")]
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tseed\tprompt\n0\tx\tA dog\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected"):
        read_prompts(bad)
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "none.tsv")


def test_a_batch_makes_each_image_from_its_own_seed():
    """Image i of a batch is the image of (prompt i, seed i) alone, up to the GEMMs' batch-dependent rounding. Three
    steps: the tiny random-weight model is chaotic enough over 50 that a 1e-6 change of one step moves some final
    latents by 10%, while a batch made with the wrong draws moves them by their whole size."""
    from reference.dpm_solver import make_plan

    rows = [Prompt(0, 29764, PROMPT), Prompt(1, 7, "a red bicycle in the rain"), Prompt(2, 7, PROMPT)]
    pipe = Pipeline(load_models(TINY, seed=0), device="cpu", plan=make_plan(steps=3))
    made = pipe.batch([p.prompt for p in rows], [p.seed for p in rows])
    for p, result in zip(rows, made, strict=True):
        alone = pipe(p.prompt, p.seed)
        assert rel_l2(result.latents, alone.latents) < 1e-4, p
        assert (result.image.int() - alone.image.int()).abs().max() <= 1, p
        assert result.latents.shape == alone.latents.shape and result.image.shape == alone.image.shape
        assert result.latents.untyped_storage().nbytes() == alone.latents.untyped_storage().nbytes()  # not the batch's
    assert rel_l2(made[0].latents, made[2].latents) > 0.1  # one prompt, two seeds


def test_a_batch_needs_a_seed_for_each_prompt(pipe):
    with pytest.raises(ValueError, match="one seed per prompt: got 2 prompts and 1 seeds"):
        pipe.batch([PROMPT, PROMPT], [SEED])


def test_an_inf_is_refused_like_a_nan():
    """An overflow to Inf with no NaN (here in the decoder's last bias) is refused naming its stage, never written as
    an image whose pixels were clamped to white."""
    from reference.dpm_solver import make_plan
    from reference.pipeline import NonFiniteOutput

    models = load_models(TINY, seed=0)
    with torch.no_grad():
        models.decoder.decoder.conv_out.bias[0] = float("inf")
    result = Pipeline(models, device="cpu", plan=make_plan(steps=1))(PROMPT, SEED)
    assert result.nonfinite == "decoder"
    with pytest.raises(NonFiniteOutput, match="the decoder stage produced NaN/Inf pixels"):
        result.check_finite()
