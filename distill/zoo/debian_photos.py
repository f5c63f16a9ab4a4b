"""Real photographs from Debian's wallpaper packages: the training data of the photos prior v2.

Only for training and for the photo benchmarks: ``make demo`` and ``make test`` never need them. The packages are
fetched with ``apt-get download`` (no root needed) and unpacked with ``dpkg -x`` into a cache folder; each
photograph is stored once as a PNG whose short side is :data:`SHORT_SIDE` px (antialiased), so patch scales match
those of the photos shipped in the wheels. Each package also holds artwork and abstract images: only the
photographs listed below by name are used (chosen by looking at every image of the packages, 2026-12-05).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHORT_SIDE = 512


@dataclass(frozen=True)
class DebianPhoto:
    """One photograph: its name in priorkit, the Debian package and the file inside the unpacked package."""

    name: str
    package: str
    path: str


_MATE = "usr/share/backgrounds/mate/nature/"
_LOMIRI = "usr/share/backgrounds/"
_PLASMA = "usr/share/wallpapers/{}/contents/images/{}"

DEBIAN_PHOTOS: tuple[DebianPhoto, ...] = (
    *(DebianPhoto(f"mate_{n.lower()}", "mate-backgrounds", f"{_MATE}{n}.jpg") for n in (
        "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
        "TwoWings", "Wood", "YellowFlower")),
    *(DebianPhoto(f"lomiri_{f.split('_by_')[0].lower()}", "lomiri-wallpapers-16.04", f"{_LOMIRI}{f}.jpg") for f in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich",
        "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi")),
    DebianPhoto("lomiri_kleiber", "lomiri-wallpapers-20.04", f"{_LOMIRI}Kleiber_by_Lukas_Baubkus.jpg"),
    *(DebianPhoto(f"plasma_{d.lower()}", "plasma-workspace-wallpapers", _PLASMA.format(d, f)) for d, f in (
        ("BytheWater", "2560x1600.jpg"), ("ColdRipple", "2560x1600.jpg"), ("ColorfulCups", "2560x1600.jpg"),
        ("DarkestHour", "2560x1600.jpg"), ("EveningGlow", "2560x1600.jpg"), ("FallenLeaf", "2560x1600.jpg"),
        ("Grey", "2560x1600.jpg"), ("OneStandsOut", "2560x1600.jpg"), ("Path", "2560x1600.jpg"),
        ("summer_1am", "2560x1600.jpg"))),
)

# Held out for evaluation, two whole photographs from each package family, fixed before the prior v2 was trained.
HELD_OUT_DEBIAN: tuple[str, ...] = ("mate_ladybird", "mate_dune", "lomiri_friends", "lomiri_picosdeeuropa",
                                    "plasma_eveningglow", "plasma_path")

# Licences as stated in each package's debian/copyright.
LICENCES: dict[str, str] = {
    "mate-backgrounds": "GPL-2+ (nature/*: photographers named in the package's AUTHORS)",
    "lomiri-wallpapers-16.04": "CC-BY-4.0, CC-BY-SA-4.0 or CC0-1.0 per photograph (named in debian/copyright)",
    "lomiri-wallpapers-20.04": "CC-BY-SA-3.0 (Kleiber by Lukas Baubkus, 2021)",
    "plasma-workspace-wallpapers": "GPL-2+ (KDE Visual Design Group)",
}


def cache_dir() -> Path:
    """Where downloaded training data lives: ``$PRIORKIT_CACHE`` or ``~/.cache/priorkit``."""
    return Path(os.environ.get("PRIORKIT_CACHE", Path.home() / ".cache" / "priorkit"))


def photo_file(name: str, root: Path | None = None) -> Path:
    """The cached PNG of a Debian photograph (it may not exist yet: see :func:`fetch_debian_photos`)."""
    if name not in {p.name for p in DEBIAN_PHOTOS}:
        raise KeyError(f"unknown Debian photo {name!r}")
    return (root or cache_dir()) / "debian-photos" / f"{name}.png"


def available(root: Path | None = None) -> bool:
    """Whether every listed photograph is in the cache."""
    return all(photo_file(p.name, root).is_file() for p in DEBIAN_PHOTOS)


def fetch_debian_photos(root: Path | None = None, quiet: bool = False) -> Path:
    """Download the packages (``apt-get download``), unpack them (``dpkg -x``), and store every listed photograph
    resized to a short side of :data:`SHORT_SIDE` as ``ROOT/debian-photos/NAME.png``. Skips what is cached.
    Raises RuntimeError with apt's message when a package cannot be had."""
    from PIL import Image

    root = root or cache_dir()
    out = root / "debian-photos"
    out.mkdir(parents=True, exist_ok=True)
    todo: dict[str, list[DebianPhoto]] = {}
    for p in DEBIAN_PHOTOS:
        if not photo_file(p.name, root).is_file():
            todo.setdefault(p.package, []).append(p)
    for package, photos in todo.items():
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            if not quiet:
                print(f"downloading {package} (Debian) for {len(photos)} photographs")
            run = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
            debs = list(Path(tmp).glob(f"{package}_*.deb"))
            if run.returncode != 0 or not debs:
                raise RuntimeError(f"apt-get download {package} failed: {run.stderr.strip()[-300:]}")
            subprocess.run(["dpkg", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
            for p in photos:
                src = Path(tmp) / "x" / p.path
                if not src.is_file():
                    raise RuntimeError(f"{package} no longer holds {p.path}")
                with Image.open(src) as im:
                    im = im.convert("RGB")
                    scale = SHORT_SIDE / min(im.size)
                    im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.LANCZOS)
                    part = out / f".{p.name}.part.png"
                    im.save(part)
                    os.replace(part, photo_file(p.name, root))
    shutil.rmtree(out / "tmp", ignore_errors=True)
    return out
