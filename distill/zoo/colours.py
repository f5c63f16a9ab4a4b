"""Named colours for the shapes world v2: the xkcd colour survey's names (shipped by matplotlib) in CIELAB.

Every object of the v2 world gets an RGB albedo drawn near a named colour and is captioned with the nearest
training name in CIELAB (CIEDE2000). A fifth of the names is held out (chosen by a hash of the name, so the choice
does not move when a list changes) and never reaches a training caption, nor does any name containing a held-out
name as whole words ("dark teal" when "teal" is held out): those measure whether a prior carries colour words it
never saw to the right colour.

Colour accuracy of a generated object: CIEDE2000 between the judge's albedo estimate and the named colour below
:data:`DELTA_E_THRESHOLD`.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

# The eight colours of the shapes world v1: a subset of v2's names, with v1's albedos.
BASIC: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.72, 0.20),
    "blue": (0.12, 0.25, 0.92),
    "yellow": (0.95, 0.85, 0.10),
    "orange": (1.00, 0.50, 0.05),
    "purple": (0.55, 0.15, 0.80),
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
}
# Survey names left out of the vocabulary: unpleasant words, and names with "/" or "'".
_EXCLUDED_WORDS = ("poo", "puke", "vomit", "barf", "snot", "shit", "booger", "sick", "piss", "nasty", "ugly")
# A colour is "right" when CIEDE2000(judge's albedo, named albedo) is below this (calibrated on renders: see
# benchmarks.priors, `colour_delta_e_calibration`).
DELTA_E_THRESHOLD = 15.0


def _is_held_out(name: str) -> bool:
    return name not in BASIC and int(hashlib.sha1(name.encode()).hexdigest(), 16) % 5 == 0


@lru_cache(maxsize=1)
def all_colours() -> dict[str, tuple[float, float, float]]:
    """Every usable name -> sRGB albedo in [0, 1]: the 8 basic colours and the xkcd survey's names."""
    from matplotlib.colors import XKCD_COLORS, to_rgb

    out = dict(BASIC)
    for key, hexval in XKCD_COLORS.items():
        name = key.removeprefix("xkcd:")
        if name in out or not re.fullmatch(r"[a-z ]+", name) or any(w in name for w in _EXCLUDED_WORDS):
            continue
        out[name] = to_rgb(hexval)
    return out


def _contains_words(name: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", name) is not None


@lru_cache(maxsize=1)
def held_out_colours() -> tuple[str, ...]:
    """The held-out fifth of the names (fixed by a hash of each name)."""
    return tuple(n for n in all_colours() if _is_held_out(n))


@lru_cache(maxsize=4)
def training_colours(reserved: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Names a training caption may use: not held out, not containing a held-out name as whole words, nor any of
    the ``reserved`` words (a world's held-out shape words: "brick orange" when "brick" is held out)."""
    held = held_out_colours() + tuple(reserved)
    return tuple(n for n in all_colours() if n not in held and not any(_contains_words(n, h) for h in held))


def mentions_held_out_colour(text: str) -> bool:
    """True when ``text`` contains a held-out colour name as whole words."""
    low = text.lower()
    return any(_contains_words(low, h) for h in held_out_colours())


def rgb_to_lab(rgb: Tensor | np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) -> CIELAB (..., 3) (D65), via scikit-image."""
    from skimage.color import rgb2lab

    arr = np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3)
    return rgb2lab(np.clip(arr, 0.0, 1.0)).reshape(np.shape(rgb))


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (..., 3) -> sRGB in [0, 1] (..., 3), clipped to the gamut."""
    from skimage.color import lab2rgb

    arr = np.asarray(lab, dtype=np.float64).reshape(-1, 1, 3)
    return np.clip(lab2rgb(arr), 0.0, 1.0).reshape(np.shape(lab))


def delta_e(rgb_a: Tensor | np.ndarray, rgb_b: Tensor | np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference of two sRGB arrays (..., 3) (broadcast) -> (...)."""
    from skimage.color import deltaE_ciede2000

    a, b = np.broadcast_arrays(np.asarray(rgb_a, dtype=np.float64), np.asarray(rgb_b, dtype=np.float64))
    return deltaE_ciede2000(rgb_to_lab(a), rgb_to_lab(b))


@lru_cache(maxsize=8)
def _table(names: tuple[str, ...]) -> np.ndarray:
    return np.array([all_colours()[n] for n in names])


def nearest_name(rgb: Tensor | np.ndarray, names: tuple[str, ...] | None = None) -> list[str]:
    """The nearest name (CIEDE2000) of each colour (N, 3) among ``names`` (default: the training names)."""
    names = names if names is not None else training_colours()
    table = _table(names)
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3)
    d = delta_e(rgb, table[None])  # (N, K)
    return [names[i] for i in d.argmin(axis=1)]


def sample_albedos(n: int, generator: torch.Generator, basic_share: float = 0.3, jitter: float = 4.0,
                   names: tuple[str, ...] | None = None) -> tuple[Tensor, list[str]]:
    """``n`` albedos (n, 3) in [0, 1] and their caption names.

    A share ``basic_share`` are the 8 basic colours exactly (the v1 world inside v2); the rest start from a
    uniformly drawn training name and move by N(0, jitter^2) in each CIELAB coordinate, then take the nearest
    training name (of ``names``, default :func:`training_colours`) as caption.
    """
    names = names if names is not None else training_colours()
    u = torch.rand(n, generator=generator)
    pick_basic = torch.randint(len(BASIC), (n,), generator=generator)
    pick_name = torch.randint(len(names), (n,), generator=generator)
    noise = torch.randn(n, 3, generator=generator).double().numpy() * jitter
    basic = list(BASIC)
    rgb = np.zeros((n, 3))
    captions: list[str | None] = [None] * n
    jittered = []
    for i in range(n):
        if float(u[i]) < basic_share:
            captions[i] = basic[int(pick_basic[i])]
            rgb[i] = BASIC[captions[i]]
        else:
            jittered.append(i)
            rgb[i] = all_colours()[names[int(pick_name[i])]]
    if jittered:
        idx = np.array(jittered)
        rgb[idx] = lab_to_rgb(rgb_to_lab(rgb[idx]) + noise[idx])
        for i, name in zip(jittered, nearest_name(rgb[idx], names), strict=True):
            captions[i] = name
    return torch.from_numpy(rgb).float(), [str(c) for c in captions]
