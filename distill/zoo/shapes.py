"""The "shapes world": five primitive shapes in eight colours, rendered by sphere tracing.

Geometry (centred at the origin, z up):

* sphere   radius 0.5
* cube     side 0.8, axis-aligned
* cylinder radius 0.4, height 0.9, axis z
* cone     base radius 0.45, height 0.9, axis z, base at z=-0.45, apex at z=+0.45
* torus    major radius 0.35, minor radius 0.15, in the xy-plane

Every shape has an exact signed distance function (SDF) in torch. ``render`` sphere-traces the SDF
along the rays of :class:`~priorkit.distill.core.cameras.Camera`, shades with a Lambertian model
``albedo * (ambient + (1 - ambient) * max(0, n.l))`` on a white background and anti-aliases by averaging
a regular ``supersample x supersample`` grid of sub-pixel rays.

Captions follow DreamFusion ("a red cube, side view"); ``training_caption`` adds template and synonym
variety but never uses the held-out paraphrase words in ``HELD_OUT_WORDS``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from priorkit.distill.core.cameras import ELEVATION_RANGE, Camera, random_cameras
from priorkit.distill.zoo.colours import BASIC
from priorkit.distill.zoo.shape_geometry import (  # noqa: F401  (re-exported: the world's public names)
    BOUNDING_RADIUS,
    CONE_HEIGHT,
    CONE_RADIUS,
    CUBE_SIDE,
    CYLINDER_HEIGHT,
    CYLINDER_RADIUS,
    SDFS,
    SHAPES,
    SPHERE_RADIUS,
    TORUS_MAJOR,
    TORUS_MINOR,
    normals,
    sdf,
    sdf_cone,
    sdf_cube,
    sdf_cylinder,
    sdf_sphere,
    sdf_torus,
    true_mesh,
)

COLOURS: dict[str, tuple[float, float, float]] = dict(BASIC)  # the eight colours (v2's names hold them too)
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)


AMBIENT = 0.3

# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------


def _index(value: str | int, names: Sequence[str], kind: str) -> int:
    if isinstance(value, int):
        if not 0 <= value < len(names):
            raise ValueError(f"{kind} index {value} out of range")
        return value
    try:
        return names.index(value)
    except ValueError:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {list(names)}") from None


def random_lights(cameras: Sequence[Camera], generator: torch.Generator | None = None) -> Tensor:
    """Random unit light directions (B, 3) (pointing from the surface towards the light).

    Biased to come from above and from the camera's side so that the visible surface is mostly lit:
    l = normalise(0.6 * eye_dir + 0.8 * z + 0.5 * N(0, I)), re-sampled where it would point below the horizon.
    """
    n = len(cameras)
    eye = torch.stack([c.eye / c.eye.norm() for c in cameras]) if n else torch.zeros(0, 3)
    up = torch.tensor([0.0, 0.0, 1.0])
    noise = torch.randn(n, 3, generator=generator)
    light = 0.6 * eye + 0.8 * up + 0.5 * noise
    light = F.normalize(light, dim=-1)
    # keep some light from above: z >= 0.1
    light[:, 2] = light[:, 2].clamp(min=0.1)
    return F.normalize(light, dim=-1)


def _trace(shape: str, origins: Tensor, dirs: Tensor, max_steps: int = 96, eps: float = 3e-4) -> tuple[Tensor, Tensor]:
    """Sphere tracing. ``origins``, ``dirs`` (N, 3) -> (hit (N,) bool, t (N,) ray parameter of the hit).

    Rays start where they enter the bounding sphere and march by the SDF value (safe for exact SDFs) until
    |f| < eps (hit) or they leave the bounding sphere (miss).
    """
    f = SDFS[shape]
    n = origins.shape[0]
    # ray / bounding sphere: t^2 + 2 b t + c = 0 with b = o.d, c = |o|^2 - R^2
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - BOUNDING_RADIUS**2
    disc = b * b - c
    hit = torch.zeros(n, dtype=torch.bool)
    t_out = torch.zeros(n)
    idx = torch.nonzero(disc > 0).squeeze(-1)
    sq = disc[idx].sqrt()
    t = (-b[idx] - sq).clamp(min=0.0)
    t_far = -b[idx] + sq
    o, d = origins[idx], dirs[idx]
    dist = torch.full_like(t, float("inf"))
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        dist = f(o + t.unsqueeze(-1) * d)
        done = dist < eps
        if done.any():
            hit[idx[done]] = True
            t_out[idx[done]] = t[done]
        t = t + dist
        keep = ~done & (t < t_far)
        if not keep.all():
            idx, t, t_far, o, d, dist = idx[keep], t[keep], t_far[keep], o[keep], d[keep], dist[keep]
    # rays still marching after max_steps graze the surface: count them as hits when very close
    if idx.numel():
        close = dist < 5e-3
        hit[idx[close]] = True
        t_out[idx[close]] = t[close]
    return hit, t_out


def _render_samples(shape_idx: Tensor, albedo: Tensor, cameras: Sequence[Camera], size: int, lights: Tensor,
                    supersample: int, ambient: float) -> tuple[Tensor, Tensor]:
    """Render at ``size * supersample`` resolution -> (rgb (B, 3, S, S), coverage (B, 1, S, S))."""
    s = size * supersample
    bsz = len(cameras)
    # A camera's rays at s x s pixels are exactly the regular supersample x supersample sub-pixel grid at size x size.
    origins = torch.empty(bsz, s, s, 3)
    dirs = torch.empty(bsz, s, s, 3)
    for i, cam in enumerate(cameras):
        origins[i], dirs[i] = cam.rays(s, s)
    origins, dirs = origins.reshape(bsz, s * s, 3), dirs.reshape(bsz, s * s, 3)
    rgb = torch.ones(bsz, s * s, 3)
    cover = torch.zeros(bsz, s * s)
    for k, name in enumerate(SHAPES):
        imgs = torch.nonzero(shape_idx == k).squeeze(-1)
        if imgs.numel() == 0:
            continue
        o, d = origins[imgs].reshape(-1, 3), dirs[imgs].reshape(-1, 3)
        hit, t = _trace(name, o, d)
        hidx = torch.nonzero(hit).squeeze(-1)
        p = o[hidx] + t[hidx, None] * d[hidx]
        nrm = normals(name, p)
        img_of_ray = imgs.repeat_interleave(s * s)[hidx]
        lambert = (nrm * lights[img_of_ray]).sum(-1).clamp(min=0.0)
        shade = albedo[img_of_ray] * (ambient + (1.0 - ambient) * lambert).unsqueeze(-1)
        flat_rgb = rgb[imgs].reshape(-1, 3)
        flat_rgb[hidx] = shade
        rgb[imgs] = flat_rgb.reshape(-1, s * s, 3)
        flat_cov = cover[imgs].reshape(-1)
        flat_cov[hidx] = 1.0
        cover[imgs] = flat_cov.reshape(-1, s * s)
    rgb = rgb.reshape(bsz, s, s, 3).permute(0, 3, 1, 2)
    cover = cover.reshape(bsz, 1, s, s)
    return rgb, cover


def render_with_coverage(shapes: Sequence[str | int], colours: Sequence[str | int], cameras: Sequence[Camera],
                         size: int = 32, lights: Tensor | None = None, supersample: int = 3,
                         generator: torch.Generator | None = None, ambient: float = AMBIENT,
                         chunk: int = 128, albedos: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Like :func:`render` but also returns the anti-aliased coverage mask.

    ``albedos`` (B, 3) in [0, 1], when given, colour the objects instead of ``colours`` (the v2 world's
    continuous colours; ``colours`` is then ignored).

    Returns ``images`` (B, 3, size, size) in [0, 1] and ``coverage`` (B, 1, size, size) in [0, 1]
    (fraction of sub-pixel rays that hit the object).
    """
    if albedos is not None:
        albedo = torch.as_tensor(albedos, dtype=torch.float32).reshape(-1, 3).clamp(0.0, 1.0)
    else:
        if len(colours) != len(cameras):
            raise ValueError("shapes, colours and cameras must have the same length")
        colour_idx = torch.tensor([_index(c, COLOUR_NAMES, "colour") for c in colours], dtype=torch.long)
        albedo = torch.tensor(list(COLOURS.values()))[colour_idx].reshape(-1, 3)  # (B, 3)
    if not (len(shapes) == albedo.shape[0] == len(cameras)):
        raise ValueError("shapes, colours and cameras must have the same length")
    shape_idx = torch.tensor([_index(s, SHAPES, "shape") for s in shapes], dtype=torch.long)
    if lights is None:
        lights = random_lights(cameras, generator)
    lights = F.normalize(torch.as_tensor(lights, dtype=torch.float32).reshape(-1, 3), dim=-1)
    if lights.shape[0] == 1 and len(cameras) > 1:
        lights = lights.expand(len(cameras), 3)
    images, coverage = [], []
    with torch.no_grad():
        for a in range(0, len(cameras), chunk):
            sl = slice(a, a + chunk)
            rgb, cov = _render_samples(shape_idx[sl], albedo[sl], cameras[sl], size, lights[sl], supersample,
                                       ambient)
            # box filter over the supersample x supersample sub-pixel grid
            images.append(F.avg_pool2d(rgb, supersample))
            coverage.append(F.avg_pool2d(cov, supersample))
    if not images:
        return torch.zeros(0, 3, size, size), torch.zeros(0, 1, size, size)
    return torch.cat(images).clamp(0.0, 1.0), torch.cat(coverage)


def render(shapes: Sequence[str | int], colours: Sequence[str | int], cameras: Sequence[Camera], size: int = 32,
           lights: Tensor | None = None, supersample: int = 3, generator: torch.Generator | None = None,
           ambient: float = AMBIENT, albedos: Tensor | None = None) -> Tensor:
    """Render one shape per camera on a white background.

    Args:
        shapes: B shape names (or indices into ``SHAPES``).
        colours: B colour names (or indices into ``COLOUR_NAMES``).
        cameras: B cameras.
        size: output resolution (square).
        lights: (B, 3) or (3,) light directions (towards the light); random (see :func:`random_lights`,
            drawn from ``generator``) when None.
        supersample: sub-pixel rays per pixel side (anti-aliasing by averaging).
        generator: RNG for the random lights; rendering is otherwise deterministic.
        ambient: ambient term of the Lambertian shading.
        albedos: (B, 3) albedos in [0, 1] used instead of ``colours`` (the v2 world's continuous colours).

    Returns:
        (B, 3, size, size) float images in [0, 1].
    """
    return render_with_coverage(shapes, colours, cameras, size, lights, supersample, generator, ambient,
                                albedos=albedos)[0]


def silhouette(shapes: Sequence[str | int], cameras: Sequence[Camera], size: int = 32,
               supersample: int = 3) -> Tensor:
    """Anti-aliased coverage masks (B, 1, size, size) in [0, 1]: fraction of sub-pixel rays hitting the shape."""
    colours = ["white"] * len(shapes)
    lights = torch.tensor([0.0, 0.0, 1.0])
    return render_with_coverage(shapes, colours, cameras, size, lights, supersample)[1]


# ----------------------------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------------------------

HELD_OUT_WORDS: tuple[str, ...] = ("crimson", "ball", "doughnut", "donut", "box", "ring", "violet")

PARAPHRASE_PROMPTS: list[tuple[str, str, str]] = [
    ("a crimson ball", "sphere", "red"),
    ("a green doughnut", "torus", "green"),
    ("a yellow box", "cube", "yellow"),
    ("a black ring", "torus", "black"),
    ("a violet cone", "cone", "purple"),
    # extras built only from held-out words
    ("a crimson doughnut", "torus", "red"),
    ("a violet box", "cube", "purple"),
]

# Everyday names for the shapes and colours. The held-out paraphrases need the encoder to carry a word it never
# saw in training to the right class; a broad vocabulary of what people call these shapes (a torus is also "a
# bagel", "a pastry", "a wreath", "a circle") gives the prior many anchors near each class.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sphere": ("orb", "globe", "marble", "bead", "pearl", "bubble", "round object"),
    "cube": ("cuboid", "block", "dice", "sugar cube", "building block", "crate", "square block", "chest"),
    "cylinder": ("tube", "pillar", "can", "column", "drum", "pipe", "tin can"),
    "cone": ("traffic cone", "funnel", "party hat", "spike", "ice cream cone", "witch hat"),
    "torus": ("hoop", "tire", "bagel", "lifebuoy", "inner tube", "wreath", "bangle", "bracelet", "loop", "annulus",
              "toroid", "washer", "life preserver", "halo", "pretzel", "pastry", "cheerio", "circle"),
}
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("scarlet", "ruby", "cherry", "blood red", "maroon", "cardinal"),
    "green": ("emerald", "lime", "olive"),
    "blue": ("navy", "azure", "cobalt"),
    "yellow": ("golden", "lemon", "mustard"),
    "orange": ("amber", "tangerine", "peach"),
    "purple": ("lilac", "magenta", "lavender", "plum", "mauve"),
    "white": ("ivory", "snow white", "pearl white"),
    "black": ("jet black", "ebony", "charcoal"),
}

# Templates over (np = "a red cube", a = article-less "red cube", shape word s, colour word c); the view is
# appended as ", <view>" unless the template places it itself ({v}).
_TEMPLATES: tuple[str, ...] = (
    "{np}",
    "{np}",
    "{np}",
    "{c} {s}",
    "a photo of {np}",
    "{s_np} that is {c}",
    "{v} of {np}",
    "a 3D model of {np}",
    "{np} on a white background",
    "a picture of {np}",
    "a simple {c} {s}",
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def contains_held_out(text: str) -> bool:
    """True when ``text`` contains any held-out paraphrase word, even as a substring ("boxy", "ring-shaped")."""
    low = text.lower()
    return any(w in low for w in HELD_OUT_WORDS)


def caption(shape: str, colour: str, view: str | None = None) -> str:
    """Canonical DreamFusion-style caption: ``"a red cube, side view"`` (``"a red cube"`` without a view)."""
    base = _article(f"{colour} {shape}")
    return f"{base}, {view}" if view else base


def training_caption(shape: str, colour: str, view: str | None = None, generator: torch.Generator | None = None,
                     synonym_prob: float = 0.35) -> str:
    """A varied caption for training the text-to-image prior, drawn with ``generator``.

    Picks one of several templates ("red cube, side view", "a photo of a red cube, side view",
    "side view of a red cube", ...) and, each with probability ``synonym_prob``, replaces the shape and the
    colour by a synonym. Never contains a word of ``HELD_OUT_WORDS``.
    """
    u = torch.rand(5, generator=generator)
    s, c = shape, colour
    if u[0] < synonym_prob:
        syn = SHAPE_SYNONYMS[shape]
        s = syn[int(u[1] * len(syn)) % len(syn)]
    if u[2] < synonym_prob:
        syn = COLOUR_SYNONYMS[colour]
        c = syn[int(u[3] * len(syn)) % len(syn)]
    template = _TEMPLATES[int(u[4] * len(_TEMPLATES)) % len(_TEMPLATES)]
    if "{v}" in template and not view:
        template = "{np}"
    text = template.format(np=_article(f"{c} {s}"), s_np=_article(s), c=c, s=s, v=view or "")
    if view and "{v}" not in template:
        text = f"{text}, {view}"
    if contains_held_out(text):  # cannot happen with the vocabulary above; guard against future edits
        raise AssertionError(f"training caption leaks a held-out word: {text!r}")
    return text


def _check_vocabulary() -> None:
    words = [w for syn in SHAPE_SYNONYMS.values() for w in syn] + [w for syn in COLOUR_SYNONYMS.values() for w in syn]
    words += list(SHAPES) + list(COLOURS) + list(_TEMPLATES)
    words += ["front view", "side view", "back view", "overhead view"]
    bad = [w for w in words if contains_held_out(w)]
    if bad:
        raise AssertionError(f"training vocabulary contains held-out words: {bad}")


_check_vocabulary()

# ----------------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------------


def make_dataset(n: int, size: int = 32, seed: int = 0, elevation_range: tuple[float, float] = ELEVATION_RANGE,
                 supersample: int = 3) -> dict[str, Tensor]:
    """Render ``n`` random examples.

    (shape, colour) classes are balanced (each of the 40 pairs appears n/40 times, up to rounding) and
    shuffled; cameras come from :func:`random_cameras`, lights from :func:`random_lights`.

    Returns a dict with ``images`` uint8 (n, 3, size, size), ``shape`` long (n,), ``colour`` long (n,),
    ``azimuth`` float (n,), ``elevation`` float (n,), ``light`` float (n, 3).
    """
    g = torch.Generator().manual_seed(seed)
    n_pairs = len(SHAPES) * len(COLOURS)
    offset = int(torch.randint(n_pairs, (1,), generator=g))
    pair = (torch.arange(n) + offset) % n_pairs
    pair = pair[torch.randperm(n, generator=g)]
    shape_idx, colour_idx = pair // len(COLOURS), pair % len(COLOURS)
    cameras = random_cameras(n, generator=g, elevation_range=elevation_range)
    lights = random_lights(cameras, g)
    images = render(shape_idx.tolist(), colour_idx.tolist(), cameras, size=size, lights=lights,
                    supersample=supersample)
    return {
        "images": (images * 255.0).round().to(torch.uint8),
        "shape": shape_idx,
        "colour": colour_idx,
        "azimuth": torch.tensor([c.azimuth for c in cameras], dtype=torch.float32),
        "elevation": torch.tensor([c.elevation for c in cameras], dtype=torch.float32),
        "light": lights,
    }


def contact_sheet(images: Tensor, path: str | Path, ncol: int = 10, scale: int = 3) -> Path:
    """Save a grid of images (B, 3, H, W) (float in [0, 1] or uint8) as a PNG, upscaled by ``scale``."""
    from PIL import Image

    if images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    b, _, h, w = images.shape
    nrow = math.ceil(b / ncol)
    pad = 2
    sheet = torch.full((3, nrow * (h + pad) + pad, ncol * (w + pad) + pad), 200, dtype=torch.uint8)
    for i in range(b):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[:, y:y + h, x:x + w] = images[i]
    img = Image.fromarray(sheet.permute(1, 2, 0).numpy())
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Save a contact sheet of the shapes world.")
    parser.add_argument("--out", default="outputs/shapes_contact_sheet.png")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # one row per shape, one column per colour, random cameras
    g = torch.Generator().manual_seed(args.seed)
    shapes = [s for s in SHAPES for _ in COLOURS]
    colours = [c for _ in SHAPES for c in COLOURS]
    cameras = random_cameras(len(shapes), generator=g)
    images = render(shapes, colours, cameras, size=args.size, generator=g)
    print(contact_sheet(images, args.out, ncol=len(COLOURS)))


if __name__ == "__main__":
    _main()


#: seed of the held-out stream: training renders use seeds 0.., the judge 0 / 10_000, benchmarks.priors 123_457
HELD_OUT_SEED = 31_337


def held_out_renders(n: int, seed: int = 0, size: int = 32) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` renders no training script sees (random shape, colour, camera, light from :data:`HELD_OUT_SEED` +
    ``seed``): images (n, 3, size, size) in [0, 1], shape indices (n,), colour indices (n,)."""
    g = torch.Generator().manual_seed(HELD_OUT_SEED + seed)
    shape_idx = torch.randint(len(SHAPES), (n,), generator=g)
    colour_idx = torch.randint(len(COLOUR_NAMES), (n,), generator=g)
    cams = random_cameras(n, generator=g)
    lights = random_lights(cams, g)
    images = render(shape_idx.tolist(), colour_idx.tolist(), cams, size=size, lights=lights)
    return images.float().clamp(0.0, 1.0), shape_idx, colour_idx
