"""The shapes world v2: v1's five shapes with any colour a person can name, and the camera as an input.

* Colour: each object's albedo is drawn near a named colour of :mod:`priorkit.distill.zoo.colours` (the xkcd
  survey's names plus v1's eight) and captioned with the nearest training name ("a dusty rose cone").
* Shape words: v1's synonyms, minus the held-out shape words below (fixed before training; a test asserts that
  neither they nor a held-out colour name ever reach a training caption).
* Camera: sin / cos of azimuth harmonics (1, 2, 4), sin / cos elevation and a 1 as a class input of the prior
  (zeros when the camera is not given, as the empty prompt stands for "no text"), so a prior can tell a cube seen
  face-on from one seen corner-on (:func:`priorkit.distill.core.cameras.direction_features`).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from priorkit.distill.core.cameras import DIRECTION_FEATURES, ELEVATION_RANGE, direction_features, view_phrase
from priorkit.distill.zoo import colours
from priorkit.distill.zoo.shapes import SHAPE_SYNONYMS, SHAPES, random_cameras, random_lights, render

# Held-out shape words, fixed 2026-12-05 before the v2 prior was trained. They include v1's paraphrase words and
# words a new user typed that v1 had never seen ("brick", "dunce cap").
HELD_OUT_SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "sphere": ("ball", "globule"),
    "cube": ("box", "brick"),
    "cylinder": ("canister", "barrel"),
    "cone": ("dunce cap", "pylon"),
    "torus": ("ring", "doughnut", "donut"),
}
_HELD_OUT_SHAPE_SET = {w for ws in HELD_OUT_SHAPE_WORDS.values() for w in ws}
TRAIN_SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    s: (s, *(w for w in SHAPE_SYNONYMS[s] if not any(re.search(rf"\b{h}\b", w) for h in _HELD_OUT_SHAPE_SET)))
    for s in SHAPES
}
# colour names a training caption may use (none holds a held-out colour name or shape word)
TRAIN_COLOURS: tuple[str, ...] = colours.training_colours(tuple(sorted(_HELD_OUT_SHAPE_SET)))
CAMERA_FEATURES = DIRECTION_FEATURES  # azimuth harmonics, elevation, camera-given flag
CFG_DROPOUT = 0.1  # share of empty prompts
CAMERA_DROPOUT = 0.2  # share of training batches' rows without the camera input

_TEMPLATES: tuple[str, ...] = ("{np}", "{np}", "{np}", "{c} {s}", "a photo of {np}", "{s_np} that is {c}",
                               "a 3D model of {np}", "{np} on a white background", "a picture of {np}")


def article(phrase: str) -> str:
    """"a red cube" / "an orange cube"."""
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def mentions_held_out(text: str) -> bool:
    """True when ``text`` holds a held-out shape word or a held-out colour name (as whole words)."""
    low = text.lower()
    return any(re.search(rf"\b{re.escape(w)}\b", low) for w in _HELD_OUT_SHAPE_SET) \
        or colours.mentions_held_out_colour(low)


camera_features = direction_features  # the prior's camera input (priorkit.distill.core.cameras)


def training_caption(shape: str, colour_name: str, view: str | None, generator: torch.Generator) -> str:
    """A varied caption: a template, a training shape word (v1's synonyms minus the held-out ones), the colour name,
    and sometimes the view phrase."""
    u = torch.rand(3, generator=generator)
    words = TRAIN_SHAPE_WORDS[shape]
    s = words[0] if float(u[0]) < 0.6 else words[int(float(u[1]) * len(words)) % len(words)]
    template = _TEMPLATES[int(float(u[2]) * len(_TEMPLATES)) % len(_TEMPLATES)]
    text = template.format(np=article(f"{colour_name} {s}"), s_np=article(s), c=colour_name, s=s)
    if view:
        text = f"{text}, {view}"
    if mentions_held_out(text):
        raise AssertionError(f"training caption leaks a held-out word: {text!r}")
    return text


def make_dataset(n: int, size: int = 32, seed: int = 0, supersample: int = 3) -> dict:
    """``n`` renders of the v2 world: balanced shapes, albedos near named colours, random cameras and lights.

    Returns ``images`` uint8 (n, 3, size, size), ``shape`` long (n,), ``albedo`` float (n, 3), ``colour_name``
    list of n str, ``azimuth`` and ``elevation`` float (n,) in degrees.
    """
    g = torch.Generator().manual_seed(seed)
    shape_idx = (torch.arange(n) % len(SHAPES))[torch.randperm(n, generator=g)]
    albedo, names = colours.sample_albedos(n, g, names=TRAIN_COLOURS)
    cameras = random_cameras(n, generator=g, elevation_range=ELEVATION_RANGE)
    lights = random_lights(cameras, g)
    images = render(shape_idx.tolist(), [], cameras, size=size, lights=lights, supersample=supersample,
                    albedos=albedo)
    return {"images": (images * 255.0).round().to(torch.uint8), "shape": shape_idx, "albedo": albedo,
            "colour_name": names, "azimuth": torch.tensor([c.azimuth for c in cameras], dtype=torch.float32),
            "elevation": torch.tensor([c.elevation for c in cameras], dtype=torch.float32)}


class ShapesDataV2:
    """Pre-rendered v2 images; each batch draws captions and the camera dropout afresh.

    ``batch`` returns images (n, 3, S, S) in [-1, 1], prompts, and camera features (n, 5).
    """

    def __init__(self, n: int, seed: int = 0, size: int = 32, cube_share: float | None = None) -> None:
        if cube_share is not None and not 0.0 < cube_share < 1.0:
            raise ValueError(f"cube_share must be in (0, 1); got {cube_share}")
        data = make_dataset(n, size=size, seed=seed)
        self.images = data["images"].float() / 127.5 - 1.0
        self.shape, self.names = data["shape"], data["colour_name"]
        self.azimuth, self.elevation = data["azimuth"], data["elevation"]
        # only the cube shows the yaw (the other shapes turn about the vertical axis): a larger share of cubes in
        # the batches strengthens the camera's training signal; None keeps the renders' balance (one in five)
        self.cube_share = cube_share
        is_cube = self.shape == SHAPES.index("cube")
        self.cubes, self.others = is_cube.nonzero().flatten(), (~is_cube).nonzero().flatten()

    def batch(self, n: int, g: torch.Generator) -> tuple[Tensor, list[str], Tensor]:
        idx = torch.randint(len(self.images), (n,), generator=g)
        if self.cube_share is not None:
            cube = torch.rand(n, generator=g) < self.cube_share
            pick = lambda pool: pool[torch.randint(len(pool), (n,), generator=g)]  # noqa: E731
            idx = torch.where(cube, pick(self.cubes), pick(self.others))
        x = self.images[idx]
        flip = torch.rand(n, generator=g) < 0.5  # a mirror image is the view from the mirrored azimuth
        x = torch.where(flip.reshape(-1, 1, 1, 1), x.flip(-1), x)
        az = torch.where(flip, -self.azimuth[idx], self.azimuth[idx])
        el = self.elevation[idx]
        u = torch.rand(n, 3, generator=g)
        prompts = []
        for k, i in enumerate(idx.tolist()):
            if u[k, 0] < CFG_DROPOUT:
                prompts.append("")
                continue
            view = view_phrase(float(az[k]), float(el[k])) if u[k, 1] < 0.5 else None
            prompts.append(training_caption(SHAPES[int(self.shape[i])], self.names[i], view, g))
        return x, prompts, camera_features(az, el, given=u[:, 2] >= CAMERA_DROPOUT)


def held_out_prompts() -> list[tuple[str, str, str]]:
    """(prompt, shape, colour name) triples of the generalisation figures, fixed: every held-out colour name with a
    basic shape word (shapes cycling), and held-out shape words with held-out colour names."""
    held = colours.held_out_colours()
    colour_only = [(article(f"{c} {SHAPES[i % len(SHAPES)]}"), SHAPES[i % len(SHAPES)], c) for i, c in enumerate(held)]
    words = [(s, w) for s, ws in HELD_OUT_SHAPE_WORDS.items() for w in ws]
    both = [(article(f"{held[(7 * i) % len(held)]} {w}"), s, held[(7 * i) % len(held)]) for i, (s, w) in
            enumerate(words * 4)]
    return colour_only + both


def training_colour_prompts(n: int = 172, seed: int = 0) -> list[tuple[str, str, str]]:
    """(prompt, shape, colour name) triples built like :func:`held_out_prompts` from ``n`` training colour names
    (drawn by ``seed``): the in-vocabulary reference for the held-out colour figure."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(TRAIN_COLOURS), generator=g)[:n].tolist()
    return [(article(f"{TRAIN_COLOURS[j]} {SHAPES[i % len(SHAPES)]}"), SHAPES[i % len(SHAPES)], TRAIN_COLOURS[j])
            for i, j in enumerate(pick)]


def renders_for(pairs: list[tuple[str, str]], n: int, seed: int, size: int = 32, supersample: int = 3) -> Tensor:
    """``n`` renders (len(pairs) * n, 3, size, size) in [0, 1] of each (shape, colour name), pair-major: the named
    albedo exactly, random cameras and lights as in the training renders (the reference set of a Frechet distance
    of samples of those prompts)."""
    g = torch.Generator().manual_seed(seed)
    shape_idx = [SHAPES.index(s) for s, _ in pairs for _ in range(n)]
    albedo = torch.tensor([colours.all_colours()[c] for _, c in pairs for _ in range(n)], dtype=torch.float32)
    cameras = random_cameras(len(shape_idx), generator=g, elevation_range=ELEVATION_RANGE)
    lights = random_lights(cameras, g)
    return render(shape_idx, [], cameras, size=size, lights=lights, supersample=supersample, albedos=albedo)


def azimuth_of(features: Tensor) -> Tensor:
    """Inverse of :func:`camera_features` for the azimuth, in degrees (B,)."""
    return torch.rad2deg(torch.atan2(features[:, 0], features[:, 1]))


