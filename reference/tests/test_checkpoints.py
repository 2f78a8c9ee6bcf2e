import os
import shutil
import zipfile

import pytest
import torch

from reference.checkpoints import (
    AUTOENCODER_FILE,
    CAPTION_FILE,
    CLIP_DIR,
    UVIT_FILE,
    CheckpointError,
    load_models,
    write_checkpoints,
)
from reference.configs import ModelConfig

TINY = ModelConfig.from_name("tiny")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    models = load_models(TINY, seed=3)
    return models, write_checkpoints(models, tmp_path_factory.mktemp("weights"))


@pytest.fixture
def folder(written, tmp_path):
    """A private copy of the written folder that a test may damage."""
    return shutil.copytree(written[1], tmp_path / "w")


def test_round_trip_in_the_official_layout(written):
    models, folder = written
    loaded = load_models(TINY, weights=folder)
    for a, b in [
        (models.uvit, loaded.uvit),
        (models.decoder, loaded.decoder),
        (models.text_encoder, loaded.text_encoder),
    ]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert loaded.weights == str(folder.resolve())
    assert "random" in models.weights


def test_real_weights_bring_their_tokenizer(written):
    from reference.clip import load_tokenizer, tokenize

    loaded = load_models(TINY, weights=written[1])
    assert loaded.clip_dir == written[1] / CLIP_DIR and load_models(TINY).clip_dir is None
    prompt = ["a photo of a cat"]
    assert torch.equal(tokenize(load_tokenizer(loaded.clip_dir), prompt), tokenize(load_tokenizer(), prompt))


def test_official_key_layout(written):
    _, folder = written
    caption = torch.load(folder / CAPTION_FILE, weights_only=True)
    assert {"module.encode_prefix.weight", "module.encode_prefix.bias"} <= caption.keys()
    ae = torch.load(folder / AUTOENCODER_FILE, weights_only=True)
    assert "post_quant_conv.weight" in ae and "decoder.conv_in.weight" in ae and "encoder.conv_in.weight" in ae
    assert "pos_embed_token" in torch.load(folder / UVIT_FILE, weights_only=True)


def rewrite(path, change):
    sd = torch.load(path, weights_only=True)
    change(sd)
    torch.save(sd, path)


CASES = {
    "missing": (
        UVIT_FILE,
        lambda sd: sd.pop("mid_block.attn.qkv.weight"),
        r"uvit_v1.pth: missing keys \['mid_block.attn.qkv.weight'\]",
    ),
    "unexpected": (UVIT_FILE, lambda sd: sd.update(extra=torch.zeros(1)), r"uvit_v1.pth: unexpected keys \['extra'\]"),
    "shape": (
        AUTOENCODER_FILE,
        lambda sd: sd.update({"decoder.conv_out.bias": torch.zeros(4)}),
        r"autoencoder_kl.pth: wrong shapes \[decoder.conv_out.bias: file \(4,\) vs model \(3,\)\]",
    ),
    "unknown-extra": (
        CAPTION_FILE,
        lambda sd: sd.update({"module.decoder_head.weight": torch.zeros(1)}),
        r"caption_decoder.pth: unexpected keys \['module.decoder_head.weight'\]",
    ),
    "no-ddp-prefix": (
        CAPTION_FILE,
        lambda sd: sd.update({"encode_prefix.weight": sd.pop("module.encode_prefix.weight")}),
        r"caption_decoder.pth: key 'encode_prefix.weight' lacks the 'module.' prefix",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_keys_are_named(folder, case):
    file, change, message = CASES[case]
    rewrite(folder / file, change)
    with pytest.raises(CheckpointError, match=message):
        load_models(TINY, weights=folder)


def test_several_problems_are_reported_together(folder):
    rewrite(folder / UVIT_FILE, lambda sd: (sd.pop("norm.weight"), sd.update(bogus=torch.zeros(1))))
    with pytest.raises(CheckpointError, match=r"missing keys \['norm.weight'\]; unexpected keys \['bogus'\]"):
        load_models(TINY, weights=folder)


def test_truncated_file(folder):
    path = folder / UVIT_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"uvit_v1.pth: not a PyTorch checkpoint: torch.save writes a zip"):
        load_models(TINY, weights=folder)


def test_a_text_file_is_named_for_what_it_is_not_for_mmap(folder):
    (folder / UVIT_FILE).write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"uvit_v1.pth: not a PyTorch checkpoint: .* not one") as e:
        load_models(TINY, weights=folder)
    assert "mmap" not in str(e.value) and "zipfile_serialization" not in str(e.value)


def test_a_zip_that_torch_did_not_write_is_corrupt(folder):
    with zipfile.ZipFile(folder / AUTOENCODER_FILE, "w") as z:
        z.writestr("notes.txt", "not a checkpoint")
    with pytest.raises(CheckpointError, match=r"autoencoder_kl.pth: not a readable PyTorch checkpoint \(truncated or"):
        load_models(TINY, weights=folder)


def test_not_a_state_dict(folder):
    torch.save([torch.zeros(1)], folder / UVIT_FILE)
    with pytest.raises(CheckpointError, match=r"uvit_v1.pth: expected a state dict \(str -> Tensor\), found list"):
        load_models(TINY, weights=folder)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_code_is_never_run(folder, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"pos_embed": Exploit(str(marker))}, folder / UVIT_FILE)
    with pytest.raises(CheckpointError, match=r"uvit_v1.pth: holds pickled Python objects \((posix|os).mkdir\)") as e:
        load_models(TINY, weights=folder)
    assert not marker.exists()
    assert "weights_only=False" not in str(e.value)  # a harness never suggests running a checkpoint's code


@pytest.mark.parametrize("missing", [UVIT_FILE, CAPTION_FILE], ids=["uvit", "caption"])
def test_missing_file(folder, missing):
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"{missing}: checkpoint not found"):
        load_models(TINY, weights=folder)


def test_missing_clip_directory(folder):
    shutil.rmtree(folder / CLIP_DIR)
    with pytest.raises(FileNotFoundError, match="no Hugging Face CLIP directory"):
        load_models(TINY, weights=folder)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights folder .* does not exist"):
        load_models(TINY, weights=tmp_path / "nope")


def test_full_size_rejects_tiny_weights(written):
    with pytest.raises(
        CheckpointError,
        match=r"uvit_v1.pth: missing keys \['in_blocks.10.attn.proj.bias', .* \(\+330 more\)\]; "
        r"wrong shapes \[clip_img_embed.bias: file \(64,\) vs model \(1536,\), ",
    ):
        load_models(ModelConfig.from_name("full"), weights=written[1])


def test_writer_refuses_to_overwrite(written):
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        write_checkpoints(written[0], written[1])


def test_random_weights_are_seeded():
    a, b, c = (load_models(TINY, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.uvit.pos_embed, b.uvit.pos_embed)
    assert not torch.equal(a.uvit.pos_embed, c.uvit.pos_embed)


def test_pipeline_on_loaded_weights_reproduces_the_original(written):
    from reference.pipeline import Pipeline

    models, folder = written
    a = Pipeline(load_models(TINY, weights=folder), device="cpu")("A cat under the sea", 13244)
    b = Pipeline(models, device="cpu")("A cat under the sea", 13244)
    assert torch.equal(a.image, b.image) and torch.equal(a.latents, b.latents)
