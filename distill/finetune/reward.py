"""Rewards: differentiable functions of a batch of samples (and their condition) -> (B,) scores, higher is better.

Samples come in the model's range (images in [-1, 1]); image rewards convert to [0, 1] themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


class Reward(Protocol):
    """r(x, cond) -> (B,): a differentiable reward of samples ``x`` (B, ...) in the model's range."""

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor: ...


@dataclass
class LinearReward:
    """r(x) = c . x (flattened): tilting a Gaussian mixture by it shifts every component (exact in ``tilt``)."""

    direction: Tensor

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        return x.flatten(1) @ self.direction.to(x)


@dataclass
class QuadraticReward:
    """r(x) = -1/2 (x - m)^T Q (x - m) with ``precision`` Q (D, D) positive semi-definite."""

    centre: Tensor
    precision: Tensor

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        d = x.flatten(1) - self.centre.to(x)
        return -0.5 * ((d @ self.precision.to(x)) * d).sum(-1)


@dataclass
class BrightnessReward:
    """Mean pixel value in [0, 1] of images in [-1, 1]."""

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        return ((x.clamp(-1, 1) + 1) / 2).mean(dim=tuple(range(1, x.ndim)))


@dataclass
class TargetColourReward:
    """Minus the mean squared distance of the pixels that are not background (not near white) to an RGB colour."""

    rgb: tuple[float, float, float]
    background: float = 0.9

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        img = (x.clamp(-1, 1) + 1) / 2
        target = torch.tensor(self.rgb, dtype=img.dtype, device=img.device).reshape(1, 3, 1, 1)
        weight = torch.sigmoid((self.background - img.min(dim=1, keepdim=True).values) * 40.0)  # soft object mask
        err = ((img - target) ** 2).sum(1, keepdim=True)
        return -(weight * err).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1.0)


class JudgeReward:
    """log p(shape) + log p(colour) of the bundled judge for each sample's prompt (shapes world).

    ``cond`` holds the prompts (a list of B strings); each names one of the world's shapes and colours (by the
    canonical words, as in "a red cube, side view"). Differentiable through the judge.
    """

    def __init__(self, judge: torch.nn.Module | None = None) -> None:
        from priorkit.distill.zoo.judge import load_judge

        self.judge = (judge or load_judge()).requires_grad_(False)

    @staticmethod
    def labels(prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Shape and colour indices named by each prompt; ValueError for a prompt naming none."""
        from priorkit.distill.zoo.shapes import COLOUR_NAMES, SHAPES

        shapes, colours = [], []
        for p in prompts:
            words = p.lower().replace(",", " ").split()
            s = [i for i, name in enumerate(SHAPES) if name in words]
            c = [i for i, name in enumerate(COLOUR_NAMES) if name in words]
            if not s or not c:
                raise ValueError(f"the judge reward needs a prompt naming a shape and a colour; got {p!r}")
            shapes.append(s[0])
            colours.append(c[0])
        return torch.tensor(shapes), torch.tensor(colours)

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        if not isinstance(cond, list):
            raise ValueError("the judge reward needs the prompts as the condition (a list of strings)")
        s_idx, c_idx = self.labels(cond)
        s_logits, c_logits = self.judge((x.clamp(-1, 1) + 1) / 2)
        ls = torch.log_softmax(s_logits, -1).gather(1, s_idx.to(x.device)[:, None])[:, 0]
        lc = torch.log_softmax(c_logits, -1).gather(1, c_idx.to(x.device)[:, None])[:, 0]
        return ls + lc


class AlbedoJudgeReward:
    """log p(shape) - 1/2 (dE76 / scale)^2 for the shapes world v2: the judge-v2's shape log-probability of each
    prompt's shape, minus the squared CIELAB distance (CIE76, differentiable through kornia) of its albedo estimate
    to the prompt's named colour in units of ``scale`` (default 15, the number of the accuracy rule's threshold).
    The rule itself is CIEDE2000 < 15, and CIE76 reads 1-2.5x CIEDE2000 on saturated colours, so the reward is
    stricter than the rule: a colour at the rule's edge costs 1/2 to ~3.

    ``cond`` holds prompts "a {colour name} {shape}" (any training or held-out name of `colours.all_colours`, a
    basic shape word; an optional ", ..." suffix such as a view is ignored). Differentiable through the judge.
    """

    def __init__(self, judge: torch.nn.Module | None = None, scale: float | None = None) -> None:
        from priorkit.distill.zoo import colours
        from priorkit.distill.zoo.judge import DEFAULT_DIR, load_judge

        self.judge = (judge or load_judge(DEFAULT_DIR.parent / "judge-v2")).requires_grad_(False)
        if getattr(self.judge, "albedo_head", None) is None:
            raise ValueError("the albedo reward needs a judge with an albedo head (judge-v2)")
        self.scale = scale or colours.DELTA_E_THRESHOLD

    @staticmethod
    def labels(prompts: list[str]) -> tuple[Tensor, Tensor]:
        """(shape indices (B,), named sRGB albedos (B, 3)); ValueError for a prompt not of the form above."""
        from priorkit.distill.zoo.colours import all_colours
        from priorkit.distill.zoo.shapes import SHAPES

        table, shapes, rgb = all_colours(), [], []
        for p in prompts:
            words = p.split(",")[0].strip().lower().split()
            if len(words) < 3 or words[0] not in ("a", "an") or words[-1] not in SHAPES:
                raise ValueError(f"the albedo reward needs prompts 'a <colour name> <shape>'; got {p!r}")
            name = " ".join(words[1:-1])
            if name not in table:
                raise ValueError(f"unknown colour name {name!r} in {p!r}")
            shapes.append(SHAPES.index(words[-1]))
            rgb.append(table[name])
        return torch.tensor(shapes), torch.tensor(rgb, dtype=torch.float32)

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        from kornia.color import rgb_to_lab

        if not isinstance(cond, list):
            raise ValueError("the albedo reward needs the prompts as the condition (a list of strings)")
        s_idx, target = self.labels(cond)
        img = (x.clamp(-1, 1) + 1) / 2
        s_logits, _ = self.judge(img)
        log_shape = torch.log_softmax(s_logits, -1).gather(1, s_idx.to(x.device)[:, None])[:, 0]
        lab = rgb_to_lab(self.judge.albedo(img)[:, :, None, None])[:, :, 0, 0]
        lab_target = rgb_to_lab(target.to(lab)[:, :, None, None])[:, :, 0, 0]
        return log_shape - 0.5 * ((lab - lab_target).pow(2).sum(-1) / self.scale ** 2)


def judge_prompts() -> Callable[[int, torch.Generator], list[str]]:
    """A draw of ``n`` prompts of the shapes world (every shape x colour, uniformly): the conditions the judge
    reward fine-tunes on."""
    from priorkit.distill.zoo.shapes import COLOUR_NAMES, SHAPES, caption

    prompts = [caption(s, c) for s in SHAPES for c in COLOUR_NAMES]

    def draw(n: int, g: torch.Generator) -> list[str]:
        return [prompts[i] for i in torch.randint(len(prompts), (n,), generator=g).tolist()]

    return draw


def albedo_triples(exclude: tuple[str, ...] | list[str] = ()) -> list[tuple[str, str, str]]:
    """(prompt "a {colour name} {shape}", shape, colour name) of the shapes world v2: the training colour names but
    ``exclude``, every basic shape."""
    from priorkit.distill.zoo.shapes import SHAPES
    from priorkit.distill.zoo.shapes_v2 import TRAIN_COLOURS, article

    skip = set(exclude)
    return [(article(f"{c} {s}"), s, c) for c in TRAIN_COLOURS if c not in skip for s in SHAPES]


def albedo_prompts(exclude: tuple[str, ...] | list[str] = ()) -> Callable[[int, torch.Generator], list[str]]:
    """A draw of ``n`` prompts "a {colour name} {shape}" of the shapes world v2 (the training colour names but
    ``exclude``, every basic shape, uniformly): the conditions the albedo reward fine-tunes on."""
    prompts = [p for p, _, _ in albedo_triples(exclude)]

    def draw(n: int, g: torch.Generator) -> list[str]:
        return [prompts[i] for i in torch.randint(len(prompts), (n,), generator=g).tolist()]

    return draw


def albedo_renders(exclude: tuple[str, ...] | list[str] = ()
                   ) -> Callable[[int, torch.Generator], tuple[Tensor, list[str]]]:
    """A draw of ``n`` renders of the shapes world v2 in [-1, 1] with their prompts (the prompts of
    :func:`albedo_prompts`, uniformly; the named albedo, random cameras and lights): real data beside a fine-tuning
    (reward_weighted's ``data_weight``)."""
    from priorkit.distill.zoo.shapes_v2 import renders_for

    triples = albedo_triples(exclude)

    def draw(n: int, g: torch.Generator) -> tuple[Tensor, list[str]]:
        pick = [triples[i] for i in torch.randint(len(triples), (n,), generator=g).tolist()]
        seed = int(torch.randint(2**31 - 1, (1,), generator=g))
        return renders_for([(s, c) for _, s, c in pick], 1, seed) * 2 - 1, [p for p, _, _ in pick]

    return draw


@dataclass
class CallableReward:
    """Any user function ``fn(x, cond) -> (B,)``."""

    fn: Callable[[Tensor, Any], Tensor]

    def __call__(self, x: Tensor, cond: Any = None) -> Tensor:
        out = self.fn(x, cond)
        if out.shape != (x.shape[0],):
            raise ValueError(f"a reward must return one value per sample ({x.shape[0]},); got {tuple(out.shape)}")
        return out


REWARDS: dict[str, Callable[[], Reward]] = {"judge": JudgeReward, "albedo": AlbedoJudgeReward,
                                            "brightness": BrightnessReward}
