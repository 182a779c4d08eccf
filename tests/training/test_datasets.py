"""Dataset readers on generated files in each real on-disk layout; splits; crops; synthetic."""

from __future__ import annotations

import numpy as np
import pytest

from qgis_cloudmask.core import radiometry
from training import datasets, synthetic
from training.config import DataConfig
from training.rasters import scene_info

pytestmark = pytest.mark.training


def test_catalogue_reader_picks_rgbn_and_counts_shadow_as_clear(data_root):
    (scene, _) = datasets.catalogue_scenes(data_root / "catalogue")
    refl, target = scene.read(0, 0, 48, 48)
    assert refl.shape == (4, 48, 48) and target.shape == (48, 48)
    # band k holds k/100 + 0.01 below the cloud: B04 = 3, B03 = 2, B02 = 1, B08 = 7
    assert refl[:, -1, -1] == pytest.approx([0.04, 0.03, 0.02, 0.08])
    assert target[:24].min() == 1.0  # CLOUD
    assert target[24:].max() == 0.0  # CLEAR and CLOUD_SHADOW both clear


def test_labelled_geotiff_reader_returns_reflectance_and_label(data_root):
    scenes = datasets.labelled_scenes(data_root / "dev_labelled")
    assert [s.name for s in scenes] == ["chip_a", "chip_b"]
    refl, target = scenes[0].read(0, 0, scenes[0].height, scenes[0].width)
    assert refl.shape == (4, 120, 130)
    cloud = target == 1
    assert cloud.any() and (~cloud).any()
    assert refl[:, cloud].min() == pytest.approx(0.6)  # DN 6000 -> 0.6
    # model channel order red, green, blue, nir: the ground levels were B02 800 .. B08 2500
    ground = refl[:, ~cloud].min(axis=1)
    assert ground[3] > ground[0] > ground[1] > ground[2]


def test_labelled_reader_selects_names(data_root):
    assert [s.name for s in datasets.labelled_scenes(data_root / "dev_labelled", ["chip_b"])] == [
        "chip_b"
    ]


def test_teacher_reader_uses_teacher_probability(data_root):
    scenes = datasets.teacher_scenes(data_root / "s2_unlabelled", data_root / "teacher")
    by_name = {s.name: s for s in scenes}
    refl, target = by_name["scene_a"].read(0, 0, 50, 60)
    expected = np.load(data_root / "teacher" / "scene_a.npy")[:50, :60].astype(np.float32)
    np.testing.assert_array_equal(target, expected)
    assert refl.shape == (4, 50, 60)


def test_teacher_reader_marks_scenes_annotated_clear_all_clear(data_root):
    scenes = datasets.teacher_scenes(data_root / "s2_unlabelled", data_root / "teacher")
    clear = [s for s in scenes if s.all_clear]
    assert [s.name for s in clear] == ["scene_b"]
    assert np.nanmax(clear[0].read(0, 0, 32, 32)[1]) == 0.0


def test_scene_info_detects_the_baseline_offset(tmp_path):
    (tmp_path / "source.json").write_text(
        '{"level": "unknown", "processing_baseline": "likely >= 04.00 (+1000 offset present)"}'
    )
    info = scene_info(tmp_path / "source.json")
    assert info.radiometry == radiometry.Radiometry.S2_DN_OFFSET and info.level == "l1c"


def test_split_is_by_group_seeded_and_saved(data_root, tmp_path):
    scenes = datasets.teacher_scenes(data_root / "s2_unlabelled", data_root / "teacher")
    train, val = datasets.load_or_make_split(scenes, tmp_path, 0.34, seed=3)
    names_t, names_v = {s.name for s in train}, {s.name for s in val}
    assert names_t and names_v and not names_t & names_v
    assert names_t | names_v == {s.name for s in scenes}
    saved = (tmp_path / "val.txt").read_text()
    assert all(n in saved for n in names_v)
    again = datasets.load_or_make_split(scenes, tmp_path, 0.9, seed=99)  # files win
    assert {s.name for s in again[1]} == names_v
    # a scene added later is in neither file: held out, not silently trained on
    (tmp_path / "train.txt").write_text("\n".join(sorted(names_t)[1:]) + "\n")
    train2, val2 = datasets.load_or_make_split(scenes, tmp_path, 0.34, seed=3)
    assert {s.name for s in train2} == set(sorted(names_t)[1:])
    assert {s.name for s in val2} == names_v


def test_split_keeps_a_group_together():
    names = ["a1", "a2", "a3", "b", "c", "d"]
    groups = ["a", "a", "a", "b", "c", "d"]
    for seed in range(10):
        train, val = datasets.split_scenes(names, ["yes"] * 6, 0.3, seed, groups)
        assert {"a1", "a2", "a3"} <= set(train) or {"a1", "a2", "a3"} <= set(val)


def test_crop_stream_yields_augmented_crops_within_reflectance_limits(data_root):
    scenes = datasets.teacher_scenes(data_root / "s2_unlabelled", data_root / "teacher")
    cfg = DataConfig(crop=64, synthetic_fraction=1.0)
    stream = iter(datasets.CropStream(scenes, cfg, seed=0))
    for _ in range(5):
        x, y = next(stream)
        assert x.shape == (4, 64, 64) and y.shape == (64, 64)
        assert float(x.min()) >= 0.0 and float(x.max()) <= cfg.max_reflectance
        finite = y[~y.isnan()]
        assert float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0


def test_crop_stream_is_reproducible_per_seed_and_epoch(data_root):
    scenes = datasets.teacher_scenes(data_root / "s2_unlabelled", data_root / "teacher")
    cfg = DataConfig(crop=32)
    a = next(iter(datasets.CropStream(scenes, cfg, seed=5, epoch=2)))[0]
    b = next(iter(datasets.CropStream(scenes, cfg, seed=5, epoch=2)))[0]
    c = next(iter(datasets.CropStream(scenes, cfg, seed=5, epoch=3)))[0]
    assert np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())


def test_synthetic_clouds_are_labelled_where_opaque_and_brighten_the_ground():
    rng = np.random.default_rng(0)
    ground = np.full((4, 96, 96), 0.05, np.float32)
    out, label = synthetic.composite_clouds(
        ground, rng, thin_probability=0.0, shadow_probability=0.0
    )
    assert label.max() == 1.0 and label.min() == 0.0
    assert out[:, label == 1].mean() > 0.3  # thick cloud is bright in every band
    assert np.allclose(out[:, label == 0].mean(), 0.05, atol=0.03)


def test_synthetic_shadow_darkens_and_stays_clear():
    rng = np.random.default_rng(4)
    ground = np.full((4, 128, 128), 0.2, np.float32)
    out, label = synthetic.composite_clouds(
        ground, rng, thin_probability=0.0, shadow_probability=1.0
    )
    shadowed = (out.mean(0) < 0.19) & (label == 0)
    assert shadowed.any()


def test_label_ramp_from_opacity():
    alpha = np.array([0.0, synthetic.LABEL_LO, 0.125, synthetic.LABEL_HI, 0.9])
    assert synthetic.label_from_opacity(alpha).tolist() == pytest.approx([0, 0, 0.5, 1, 1])
