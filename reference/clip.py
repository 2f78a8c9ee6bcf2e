"""CLIP ViT-L/14 text tower (Hugging Face `CLIPTextModel`), its offline BPE tokenizer, and `encode_prefix`.

The BPE merges are data: `data/bpe_simple_vocab_16e6.txt.gz` from the open_clip_torch wheel (MIT licence,
data/LICENSE-open_clip), the same list OpenAI's CLIP and Hugging Face's vocab.json/merges.txt are built from.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from reference.configs import CLIPConfig

BPE_PATH = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # OpenAI's SimpleTokenizer keeps this many merges (vocab 49408)


def _bytes_to_unicode() -> list[str]:
    """The byte -> printable-character table of GPT-2/CLIP byte-level BPE, in vocabulary order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


@functools.cache
def _offline_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    with gzip.open(BPE_PATH, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def load_tokenizer(clip_dir: Path | None = None) -> CLIPTokenizer:
    """The tokenizer of a local Hugging Face CLIP directory, or the same BPE built from the shipped merges."""
    if clip_dir is not None:
        return CLIPTokenizer.from_pretrained(str(clip_dir), local_files_only=True)
    vocab, merges = _offline_vocab()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges))


class PromptTruncated(UserWarning):
    """A prompt longer than CLIP's context: the model reads its first tokens only."""


def truncation(tokenizer: CLIPTokenizer, prompt: str, *, max_tokens: int = 77) -> str | None:
    """None when CLIP reads all of `prompt`; else a sentence with its token count and the text CLIP does not read."""
    ids = tokenizer(prompt, truncation=False, verbose=False)["input_ids"]  # BOS, the prompt's tokens, EOS
    if len(ids) <= max_tokens:
        return None
    dropped = tokenizer.decode(ids[max_tokens - 1 : -1]).strip()
    shown = dropped if len(dropped) <= 80 else dropped[:77] + "..."
    return (f"the prompt is {len(ids)} tokens with its start and end tokens and CLIP reads {max_tokens}: the last "
            f"{len(ids) - max_tokens} are dropped ({shown!r})")  # fmt: skip


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str], *, max_tokens: int = 77) -> Tensor:
    """(B,) prompts -> (B, 77) ids: BOS ... EOS then EOS as padding, truncated to 77 (no attention mask is used)."""
    enc = tokenizer(prompts, truncation=True, max_length=max_tokens, padding="max_length", return_tensors="pt")
    return enc["input_ids"]


def hf_config(cfg: CLIPConfig) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_tokens,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.eos_token_id,
        attn_implementation="eager",  # the explicit softmax path: the oracle must not depend on SDPA's choice
    )


def text_tower(clip: CLIPTextModel) -> nn.Module:
    """The module holding embeddings, encoder and final_layer_norm: `clip.text_model` in older transformers, `clip`
    itself in newer ones."""
    return getattr(clip, "text_model", clip)


class TextEncoder(nn.Module):
    """input_ids (B, 77) -> CLIP last_hidden_state (B, 77, 768) -> encode_prefix -> text condition (B, 77, 64).

    `clip` is the Hugging Face CLIPTextModel; `encode_prefix` is the caption decoder's Linear(768 -> 64).
    """

    def __init__(self, clip: CLIPTextModel, encode_prefix: nn.Linear):
        super().__init__()
        self.clip = clip
        self.encode_prefix = encode_prefix

    @classmethod
    def from_config(cls, cfg: CLIPConfig, *, text_dim: int) -> TextEncoder:
        return cls(CLIPTextModel(hf_config(cfg)), nn.Linear(cfg.width, text_dim))

    def forward(self, input_ids: Tensor) -> Tensor:
        # The tower's own layers, with positions and the causal mask made here by kernels: transformers' mask helper
        # copies a host scalar to the GPU, which CUDA-graph capture forbids, and its pooled output (unused by
        # UniDiffuser) indexes by a data-dependent argmax. Equal to `clip(input_ids).last_hidden_state` bit for bit.
        tower = text_tower(self.clip)
        L = input_ids.shape[1]
        positions = torch.arange(L, device=input_ids.device)[None]  # (1, 77)
        hidden = tower.embeddings(input_ids=input_ids, position_ids=positions)  # (B, 77, 768)
        mask = torch.full((L, L), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device).triu(1)
        hidden = tower.encoder(inputs_embeds=hidden, attention_mask=mask[None, None]).last_hidden_state
        hidden = tower.final_layer_norm(hidden)  # (B, 77, 768)
        return self.encode_prefix(hidden)  # (B, 77, 64)
