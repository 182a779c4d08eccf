"""Fixtures for the training tests: tiny generated data in every real on-disk layout.

Nothing here reads ../shared; torch is imported by the test modules of this folder only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.training.generate import write_catalogue, write_labelled_pair, write_unlabelled_scene
from training import config

TINY = config.REPO_ROOT / "training/configs/tiny.yaml"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root with s2_unlabelled (3 scenes + teacher npy), dev_labelled and a catalogue."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(1)
    teacher = root / "teacher"
    teacher.mkdir()
    for i, (name, clouds) in enumerate(
        [("scene_a", "yes"), ("scene_b", "no"), ("scene_c", "yes"), ("scene_d", "thin")]
    ):
        cloud = write_unlabelled_scene(root / "s2_unlabelled" / name, 96 + 8 * i, 100, clouds, rng)
        np.save(teacher / f"{name}.npy", cloud.astype(np.float16))
        (teacher / f"{name}.json").write_text(json.dumps({"scene": name}))
    write_labelled_pair(root / "dev_labelled", "chip_a", 120, 130, rng)
    write_labelled_pair(root / "dev_labelled", "chip_b", 64, 64, rng)
    write_catalogue(root / "catalogue", ["s1", "s2"], 48, rng)
    return root


@pytest.fixture(scope="module")
def tiny_cfg(data_root, tmp_path_factory):
    """tiny.yaml on the generated data root, its splits, runs and export in a folder of the
    test module's own (one per module: a module's runs never meet another's)."""
    tmp = tmp_path_factory.mktemp("tiny")
    return config.load(
        TINY,
        {
            "data.teacher_dir": str(data_root / "teacher"),
            "data.split_dir": str(tmp / "splits"),
            "train.runs_dir": str(tmp / "runs"),
            "export.out": str(tmp / "cloudmask.onnx"),
        },
    )
