"""The text-encoder probes that bound the shapes world v2's held-out figures (no text encoder needed)."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
import torch

from priorkit.distill.zoo import colours
from priorkit.distill.zoo.text_probe import colour_probe_accuracy, ridge_penalty, shape_word_probe_accuracy

TRAIN = colours.training_colours()[:300]
HELD = colours.held_out_colours()[:60]


def _name(prompt: str) -> str:
    return re.fullmatch(r"a (.+) sphere", prompt).group(1)


def _noise(text: str, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    return torch.randn(dim, generator=g, dtype=torch.float64)


def knowing_encoder(prompts: list[str]) -> torch.Tensor:
    """An encoder that carries every name's CIELAB (an affine image of it) beside noise dimensions."""
    lab = torch.from_numpy(colours.rgb_to_lab(np.array([colours.all_colours()[_name(p)] for p in prompts])))
    mix = torch.tensor([[0.02, 0.01, 0.0], [0.0, 0.03, -0.01], [0.0, 0.0, 0.02]], dtype=torch.float64)
    return torch.cat([lab @ mix + 1.0,
                      0.05 * torch.stack([_noise(p, 5) for p in prompts])], dim=1)


def vocabulary_encoder(prompts: list[str]) -> torch.Tensor:
    """Carries the colour for the training names only; a held-out name is an unrelated vector."""
    known = knowing_encoder(prompts)
    held = torch.tensor([_name(p) in set(HELD) for p in prompts])
    return torch.where(held[:, None], torch.stack([_noise(p + "!", 8) * 2 for p in prompts]), known)


def test_an_encoder_that_knows_every_colour_gives_the_probes_full_marks() -> None:
    out = colour_probe_accuracy(knowing_encoder, TRAIN, HELD)
    assert out["ridge"] == pytest.approx(1.0)
    assert out["ridge_train"] == pytest.approx(1.0)
    assert out["mlp"] >= 0.9


def test_held_out_names_the_encoder_never_learned_score_near_chance() -> None:
    out = colour_probe_accuracy(vocabulary_encoder, TRAIN, HELD)
    assert out["ridge_train"] == pytest.approx(1.0)  # the probe fits the training names ...
    assert out["ridge"] < 0.3 and out["mlp"] < 0.3   # ... and is scored on the held-out names only


def test_ridge_penalty_is_chosen_by_cross_validation() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 40))
    clean = x[:, :1] * 3.0
    assert ridge_penalty(x, clean) == 0.01                             # an exact linear target: least penalty
    assert ridge_penalty(x, rng.normal(size=(60, 1))) == 100.0       # pure noise: shrink to the mean


def test_shape_word_probe_reads_the_nearest_training_word() -> None:
    train = {"sphere": ("sphere", "orb"), "cube": ("cube", "block")}
    held = {"sphere": ("ball",), "cube": ("box", "brick")}
    axis = {"sphere": 0, "orb": 0, "ball": 0, "cube": 1, "block": 1, "box": 1, "brick": 0}  # "brick" misread

    def encode(prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), 2)
        for i, p in enumerate(prompts):
            out[i, axis[p.removeprefix("a red ")]] = 1.0
        return out

    assert shape_word_probe_accuracy(encode, train, held) == pytest.approx(2 / 3)
