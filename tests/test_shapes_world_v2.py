"""The shapes world v2: named colours, held-out words that never reach training, camera features, albedo renders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from priorkit.distill.zoo import colours, shapes, shapes_v2


def test_the_held_out_fifth_is_fixed_and_disjoint_from_training():
    held, train = set(colours.held_out_colours()), set(colours.training_colours())
    n = len(colours.all_colours())
    assert 0.15 < len(held) / n < 0.25 and not held & train
    assert set(colours.BASIC) <= train  # v1's eight colours stay trainable
    # no training name contains a held-out name as whole words ("dark teal" when "teal" is held out)
    assert not [t for t in train if colours.mentions_held_out_colour(t)]
    # chosen by a hash of the name: the same whatever the list order
    assert all(colours._is_held_out(h) for h in held)


def test_no_held_out_word_reaches_a_training_caption():
    g = torch.Generator().manual_seed(0)
    assert set(shapes_v2.TRAIN_COLOURS) < set(colours.training_colours())
    assert "brick orange" not in shapes_v2.TRAIN_COLOURS  # holds the held-out shape word "brick"
    for name in shapes_v2.TRAIN_COLOURS:
        for shape in shapes.SHAPES:
            text = shapes_v2.training_caption(shape, name, "side view", g)
            assert not shapes_v2.mentions_held_out(text), text
    for words in shapes_v2.HELD_OUT_SHAPE_WORDS.values():
        for w in words:
            assert not any(w in t for ts in shapes_v2.TRAIN_SHAPE_WORDS.values() for t in ts)
            assert shapes_v2.mentions_held_out(f"a red {w}")


def test_the_in_vocabulary_reference_prompts_use_training_names_only():
    prompts = shapes_v2.training_colour_prompts()
    assert len(prompts) == len({c for _, _, c in prompts}) == 172
    assert prompts == shapes_v2.training_colour_prompts()  # fixed by its seed
    assert not [p for p, _, _ in prompts if shapes_v2.mentions_held_out(p)]
    assert all(p.endswith(f"{c} {s}") and c in shapes_v2.TRAIN_COLOURS for p, s, c in prompts)
    assert {s for _, s, _ in prompts} == set(shapes.SHAPES)


def test_sampled_albedos_are_captioned_with_a_near_training_name():
    rgb, names = colours.sample_albedos(300, torch.Generator().manual_seed(1))
    assert rgb.shape == (300, 3) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    assert set(names) <= set(colours.training_colours())
    table = np.array([colours.all_colours()[n] for n in names])
    de = colours.delta_e(rgb.numpy(), table)
    assert np.median(de) < 5 and np.quantile(de, 0.95) < colours.DELTA_E_THRESHOLD
    assert sum(n in colours.BASIC for n in names) > 50  # the v1 world inside v2


def test_delta_e_is_ciede2000():
    assert colours.delta_e([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == pytest.approx(0.0, abs=1e-9)
    # Sharma et al. (2005) test pair 1: Lab (50, 2.6772, -79.7751) vs (50, 0, -82.7485): dE00 = 2.0425
    from skimage.color import deltaE_ciede2000

    assert deltaE_ciede2000([50, 2.6772, -79.7751], [50, 0, -82.7485]) == pytest.approx(2.0425, abs=1e-4)
    red, blue = colours.BASIC["red"], colours.BASIC["blue"]
    assert colours.delta_e(red, blue) > 40 > colours.DELTA_E_THRESHOLD


def test_render_with_an_albedo_equals_the_named_colour():
    cams = shapes.random_cameras(2, generator=torch.Generator().manual_seed(0))
    light = torch.tensor([0.3, -0.2, 1.0])
    named = shapes.render(["cube", "torus"], ["red", "blue"], cams, size=16, lights=light)
    albedo = torch.tensor([shapes.COLOURS["red"], shapes.COLOURS["blue"]])
    torch.testing.assert_close(shapes.render(["cube", "torus"], [], cams, size=16, lights=light, albedos=albedo),
                               named)


def test_camera_features_round_trip_and_dropout():
    az, el = torch.tensor([-170.0, -30.0, 0.0, 95.0]), torch.tensor([0.0, 10.0, 45.0, 60.0])
    f = shapes_v2.camera_features(az, el)
    assert f.shape == (4, shapes_v2.CAMERA_FEATURES) == (4, 9)
    torch.testing.assert_close(shapes_v2.azimuth_of(f), az, atol=1e-4, rtol=0)
    dropped = shapes_v2.camera_features(az, el, given=torch.tensor([True, False, True, False]))
    assert torch.all(dropped[1] == 0) and torch.all(dropped[3] == 0) and torch.equal(dropped[0], f[0])


def test_v2_batches_mirror_the_camera_with_the_image():
    data = shapes_v2.ShapesDataV2(20, seed=0, size=16)
    x, prompts, cams = data.batch(12, torch.Generator().manual_seed(3))
    assert x.shape == (12, 3, 16, 16) and len(prompts) == 12 and cams.shape == (12, shapes_v2.CAMERA_FEATURES)
    assert not any(shapes_v2.mentions_held_out(p) for p in prompts)
    given = cams[:, -1] == 1
    assert torch.all(cams[~given] == 0)


def test_a_projection_class_unet_without_camera_gets_the_zero_vector():
    from diffusers import UNet2DConditionModel

    from priorkit.distill.core.diffusers_adapter import DiffusersDenoiser
    from priorkit.distill.zoo.train_prior import SHAPES_SCHEDULER

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                attention_head_dim=8, norm_num_groups=8, class_embed_type="projection",
                                projection_class_embeddings_input_dim=5)
    den = DiffusersDenoiser(unet.eval(), SHAPES_SCHEDULER)
    x, text = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8)
    t = torch.tensor(0.5)
    with torch.no_grad():
        implicit = den(x, t, text).x0
        zeros = den(x, t, {"text": text, "class_labels": torch.zeros(2, 5)}).x0
        camera = den(x, t, {"text": text, "class_labels": torch.ones(2, 5)}).x0
    torch.testing.assert_close(implicit, zeros)
    assert (implicit - camera).abs().max() > 1e-4


def test_cube_share_sets_the_share_of_cubes_in_the_batches():
    data = shapes_v2.ShapesDataV2(40, seed=0, size=8, cube_share=0.6)
    cube_words = shapes_v2.TRAIN_SHAPE_WORDS["cube"]
    _, prompts, _ = data.batch(400, torch.Generator().manual_seed(0))
    named = [p for p in prompts if p]
    share = sum(any(w in p for w in cube_words) for p in named) / len(named)
    assert abs(share - 0.6) < 0.08, share  # 1 in 5 without it
    _, prompts, _ = shapes_v2.ShapesDataV2(40, seed=0, size=8).batch(400, torch.Generator().manual_seed(0))
    named = [p for p in prompts if p]
    assert abs(sum(any(w in p for w in cube_words) for p in named) / len(named) - 0.2) < 0.08
    with pytest.raises(ValueError, match="cube_share"):
        shapes_v2.ShapesDataV2(10, size=8, cube_share=1.0)
