"""The distillation teacher: ukis-csmask's 4-band ONNX U-Nets (Apache-2.0, EfficientNet-B4).

We run its ONNX graph directly (not ``CSmask``) because we need *soft* cloud probabilities, and
we blend its tiles with the plugin's own tiling core so teacher and student see images the same
way. Input: reflectance 0..1 in the teacher's band order (blue, green, red, nir); the teacher
normalises with the mean/std from the JSON beside each model. Classes: 0 clear, 1 cloud,
2 shadow; for our binary task shadow counts as clear, so P(cloud) = softmax[:, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qgis_cloudmask.core import inference

TEACHER_TILE = 256
TEACHER_OVERLAP = 32
#: Band order the teacher expects (matches the s2_unlabelled / dev_labelled file order).
TEACHER_BANDS = ("blue", "green", "red", "nir")


def teacher_level(level_text: str | None) -> str:
    """``"l2a"`` for an L2A product, ``"l1c"`` otherwise (unknown levels get the L1C model)."""
    text = (level_text or "").strip().upper()
    return "l2a" if text.startswith("L2A") else "l1c"


class Teacher:
    """ukis-csmask 4-band model for one product level, returning P(cloud) per pixel."""

    def __init__(self, level: str = "l1c", threads: int | None = None) -> None:
        import onnxruntime as ort
        import ukis_csmask

        level = level.lower()
        if level not in ("l1c", "l2a"):
            raise ValueError(f"teacher level must be 'l1c' or 'l2a', got {level!r}")
        root = Path(ukis_csmask.__file__).parent
        self.model_file = root / f"model_4b_{level}.onnx"
        meta = json.loads(self.model_file.with_suffix(".json").read_text())
        stats = meta["data"]["dataset_statistics"]
        if [b.lower() for b in stats["band_names"]] != list(TEACHER_BANDS):
            raise ValueError(f"unexpected teacher band order {stats['band_names']}")
        self.mean = np.asarray(stats["img"][0], np.float32).reshape(1, 4, 1, 1)
        self.std = np.asarray(stats["img"][1], np.float32).reshape(1, 4, 1, 1)
        self.version = meta["model"]["version"]
        self.level = level
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(self.model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """``N x 4 x 256 x 256`` reflectance (B, G, R, NIR) -> ``N x 256 x 256`` P(cloud)."""
        x = (tiles.astype(np.float32) - self.mean) / self.std
        (logits,) = self.session.run(None, {self.input_name: x})
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e[:, 1] / e.sum(axis=1)).astype(np.float32)

    def probability(
        self, reflectance_bgrn: np.ndarray, valid: np.ndarray | None = None, batch_size: int = 4
    ) -> np.ndarray:
        """Blended P(cloud) ``H x W`` for a whole image (nodata pixels -> NaN)."""
        prob, mask, _ = inference.classify_array(
            self.predict,
            reflectance_bgrn,
            TEACHER_TILE,
            TEACHER_OVERLAP,
            0.5,
            batch_size=batch_size,
            valid=valid,
        )
        prob = prob.astype(np.float32)
        prob[mask == 255] = np.nan
        return prob
