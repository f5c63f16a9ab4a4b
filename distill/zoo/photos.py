"""Natural photographs shipped inside the wheels of scikit-image, scikit-learn and matplotlib.

No download: every file below is installed with those packages. Three whole photos (one per package)
are held out for evaluation; the others feed the "photos" prior as random multi-scale patches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from priorkit.distill.zoo.debian_photos import DEBIAN_PHOTOS, HELD_OUT_DEBIAN, fetch_debian_photos
from priorkit.distill.zoo.debian_photos import photo_file as debian_photo_file


def _skimage(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def _sklearn(name: str) -> Path:
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / name


def _matplotlib(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / name


PHOTOS: dict[str, tuple] = {
    "astronaut": (_skimage, "astronaut.png"),
    "coffee": (_skimage, "coffee.png"),
    "rocket": (_skimage, "rocket.jpg"),
    "motorcycle_left": (_skimage, "motorcycle_left.png"),
    "motorcycle_right": (_skimage, "motorcycle_right.png"),
    "hubble_deep_field": (_skimage, "hubble_deep_field.jpg"),
    "retina": (_skimage, "retina.jpg"),
    "ihc": (_skimage, "ihc.png"),
    "china": (_sklearn, "china.jpg"),
    # held out, one from each package
    "chelsea": (_skimage, "chelsea.png"),
    "flower": (_sklearn, "flower.jpg"),
    "grace_hopper": (_matplotlib, "grace_hopper.jpg"),
}
HELD_OUT: tuple[str, ...] = ("chelsea", "flower", "grace_hopper")
TRAIN: tuple[str, ...] = tuple(n for n in PHOTOS if n not in HELD_OUT)

# Photo set v2 (the photos prior v2): the wheels' photographs plus Debian's wallpaper photographs
# (distill/zoo/debian_photos.py, downloaded for training and benchmarks only). Held out: whole photographs from
# every source, fixed before training.
HELD_OUT_V2: tuple[str, ...] = HELD_OUT + HELD_OUT_DEBIAN
TRAIN_V2: tuple[str, ...] = TRAIN + tuple(p.name for p in DEBIAN_PHOTOS if p.name not in HELD_OUT_DEBIAN)
PHOTO_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {"v1": (TRAIN, HELD_OUT),
                                                                   "v2": (TRAIN_V2, HELD_OUT_V2)}


# Photographs that ship with gradio (its media assets): never training data; the web app offers them as unseen
# examples beside the held-out photos.
GRADIO_EXAMPLES: tuple[str, ...] = ("cheetah.jpg", "cheetah1.jpg", "lion.jpg", "tower.jpg")


def gradio_example_paths() -> list[Path]:
    """The files of :data:`GRADIO_EXAMPLES` in the installed gradio (those present)."""
    import gradio

    folder = Path(gradio.__file__).parent / "media_assets" / "images"
    return [folder / n for n in GRADIO_EXAMPLES if (folder / n).is_file()]


def photo_path(name: str) -> Path:
    """The file of a photograph by name: shipped in a wheel, or in the Debian cache (fetched on first use)."""
    if name in PHOTOS:
        where, file = PHOTOS[name]
        return where(file)
    if name in {p.name for p in DEBIAN_PHOTOS}:
        path = debian_photo_file(name)
        if not path.is_file():
            fetch_debian_photos()
        return path
    raise KeyError(f"unknown photo {name!r}; known: {', '.join(PHOTOS)} and the Debian photographs")


def load_image(path: str | Path) -> Tensor:
    """An image file as a float RGB tensor (3, H, W) in [0, 1] (greyscale and alpha are dropped to RGB)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_photo(name: str) -> Tensor:
    """A bundled photo as a float tensor (3, H, W) in [0, 1]."""
    return load_image(photo_path(name))


def training_photos(photo_set: str = "v1") -> list[Tensor]:
    """The training photographs of ``photo_set`` (3, H, W) in [0, 1]; "v2" fetches Debian's into the cache first.
    Raises ValueError for an unknown set."""
    if photo_set not in PHOTO_SETS:
        raise ValueError(f"unknown photo set {photo_set!r}; expected one of {', '.join(PHOTO_SETS)}")
    if photo_set != "v1":
        from priorkit.distill.zoo.debian_photos import fetch_debian_photos

        fetch_debian_photos()
    return [load_photo(n) for n in PHOTO_SETS[photo_set][0]]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def folder_photos(folder: str | Path, min_side: int = 64) -> tuple[list[Tensor], list[tuple[str, str]]]:
    """The photographs of a user's folder (not recursive), for training a photos prior on them.

    Returns the images (3, H, W) in [0, 1] and the files left out with the reason (unreadable, too small, not an
    image). Raises ValueError when no usable image remains.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    images, skipped = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((path.name, f"not an image file ({', '.join(IMAGE_SUFFIXES)})"))
            continue
        try:
            img = load_image(path)
        except Exception as e:  # PIL raises many kinds for a damaged file
            skipped.append((path.name, f"unreadable: {e}"))
            continue
        if min(img.shape[1:]) < min_side:
            skipped.append((path.name, f"smaller than {min_side} px on a side"))
            continue
        images.append(img)
    if not images:
        raise ValueError(f"no usable photograph in {folder} (left out: {len(skipped)})")
    return images, skipped


class PatchSampler:
    """Random square patches of a set of photos: random scale (zoom out by up to ``max_zoom``),
    position and horizontal flip, resized to ``size`` with antialiasing. Output in [-1, 1]."""

    def __init__(self, names: tuple[str, ...] = TRAIN, size: int = 64, max_zoom: float = 4.0,
                 photos: list[Tensor] | None = None) -> None:
        """Patches of the bundled photos ``names``, or of ``photos`` (3, H, W) in [0, 1] when given."""
        self.photos = list(photos) if photos is not None else [load_photo(n) for n in names]
        if any(min(p.shape[1:]) < size for p in self.photos):
            raise ValueError(f"every photo must be at least {size} px on a side")
        self.size, self.max_zoom = size, max_zoom
        areas = torch.tensor([p.shape[1] * p.shape[2] for p in self.photos], dtype=torch.float64)
        self.weights = areas.sqrt() / areas.sqrt().sum()  # large photos a little more often

    def __call__(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, 3, size, size) patches in [-1, 1]."""
        out = []
        which = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        u = torch.rand(n, 4, generator=generator)
        for k, (a, b, c, d) in zip(which.tolist(), u.tolist(), strict=True):
            img = self.photos[k]
            h, w = img.shape[1:]
            side = int(round(self.size * self.max_zoom ** a))  # log-uniform zoom
            side = max(self.size // 2, min(side, h, w))
            top, left = int(b * (h - side)), int(c * (w - side))
            patch = img[:, top:top + side, left:left + side].unsqueeze(0)
            if side != self.size:
                patch = F.interpolate(patch, size=(self.size, self.size), mode="bilinear", antialias=True,
                                      align_corners=False)
            if d < 0.5:
                patch = patch.flip(-1)
            out.append(patch)
        return torch.cat(out).clamp(0, 1) * 2 - 1


def held_out_images(n: int, size: int, photo_set: str = "v1") -> tuple[Tensor, list[str]]:
    """The first ``n`` held-out photos of ``photo_set`` (v1: :data:`HELD_OUT`, shipped; v2: :data:`HELD_OUT_V2`,
    Debian's fetched on first use): centre square crops resized (antialiased bilinear) to ``size``;
    returns images (n, 3, size, size) in [0, 1] and their names."""
    if size < 8:
        raise ValueError(f"size must be >= 8; got {size}")
    names = list(PHOTO_SETS[photo_set][1][:n])
    out = []
    for name in names:
        p = load_photo(name)
        s = min(p.shape[-2:])
        top, left = (p.shape[-2] - s) // 2, (p.shape[-1] - s) // 2
        crop = p[None, :, top:top + s, left:left + s]
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out).clamp(0.0, 1.0), names
