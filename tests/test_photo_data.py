"""The photo sets: held-out photographs (and gradio's example photos) never feed training."""

from __future__ import annotations

import hashlib

from priorkit.distill.zoo import debian_photos, photos


def test_held_out_photos_never_feed_training_in_any_photo_set():
    for train, held in photos.PHOTO_SETS.values():
        assert not set(train) & set(held) and len(set(train)) == len(train)
    train, held = photos.PHOTO_SETS["v2"]
    listed = set(photos.PHOTOS) | {p.name for p in debian_photos.DEBIAN_PHOTOS}
    assert set(train) | set(held) == listed
    assert set(photos.HELD_OUT) <= set(held)  # chelsea, flower, grace_hopper stay held out
    # whole photographs from several sources are held out: the wheels and three Debian package families
    packages = {p.package for p in debian_photos.DEBIAN_PHOTOS if p.name in held}
    assert len(packages) >= 3 and len(held) >= 6


def test_the_training_sampler_is_built_from_the_training_list_only(monkeypatch):
    """train_prior's photo set v2 loads exactly TRAIN_V2 (no held-out name reaches load_photo)."""
    from priorkit.distill.zoo import train_prior

    loaded: list[str] = []
    monkeypatch.setattr(debian_photos, "fetch_debian_photos", lambda *a, **k: None)
    monkeypatch.setattr(photos, "load_photo", lambda name: loaded.append(name) or (_ for _ in ()).throw(StopIteration))
    try:
        train_prior.train_prior("photos", "/nonexistent/never-written", steps=1, batch_size=1, photo_set="v2")
    except (StopIteration, RuntimeError):
        pass
    assert loaded and set(loaded) <= set(photos.TRAIN_V2) and not set(loaded) & set(photos.HELD_OUT_V2)


def test_gradio_example_photos_are_not_training_photos():
    paths = photos.gradio_example_paths()
    assert paths, "gradio's example photographs are missing"
    digest = lambda p: hashlib.sha1(p.read_bytes()).hexdigest()  # noqa: E731
    train_files = {digest(photos.photo_path(n)) for n in photos.TRAIN if photos.photo_path(n).is_file()}
    assert not {digest(p) for p in paths} & train_files
