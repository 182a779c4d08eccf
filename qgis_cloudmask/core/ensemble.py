"""Several ONNX cloud models run on the same tiles, their probabilities averaged.

An :class:`Ensemble` of one model is that model (same name, version, defaults), so the pipeline
always runs an ensemble. The members must agree on what they are fed (bands in one channel
order, tile size, input kind); the ensemble's defaults are the (weighted) mean of the members'
thresholds and the largest recommended overlap.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence

import numpy as np

from qgis_cloudmask.core.model import CloudModel, ModelError, ModelInfo

Prepare = Callable[[np.ndarray], np.ndarray]


def _name(model: CloudModel) -> str:
    return os.path.basename(model.path)


def check_agreement(models: Sequence[CloudModel]) -> list[str]:
    """Raise :class:`ModelError` naming the first disagreement on what the models are fed;
    return warnings for differences that only matter for the result (resolution)."""
    first = models[0]
    checks = (
        ("input bands (channel order)", lambda i: ", ".join(i.bands)),
        ("tile size", lambda i: f"{i.tile_size} px"),
        ("input kind", lambda i: i.input_kind),
    )
    for what, shown in checks:
        for other in models[1:]:
            if shown(other.info) != shown(first.info):
                raise ModelError(
                    f"The models of the ensemble disagree on their {what}: "
                    f"'{_name(first)}' takes {shown(first.info)}, '{_name(other)}' takes "
                    f"{shown(other.info)}. Every model of an ensemble must be fed the same "
                    "tiles: choose models exported with the same contract."
                )
    warnings = []
    resolutions = {m.info.resolution_m for m in models}
    if len(resolutions) > 1:
        listed = ", ".join(f"{_name(m)}: {m.info.resolution_m:g} m" for m in models)
        warnings.append(
            f"The models of the ensemble were trained for different pixel sizes ({listed})."
        )
    return warnings


def check_weights(weights: Sequence[float] | None, count: int) -> tuple[float, ...]:
    """Weights normalised to sum 1 (equal when ``None``); ``ValueError`` in words."""
    if weights is None or len(weights) == 0:
        return (1.0 / count,) * count
    if len(weights) != count:
        raise ValueError(
            f"{len(weights)} weight(s) were given for {count} model(s): give one per model"
        )
    values = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"model weights must be numbers greater than 0, got {w!r}")
        values.append(float(w))
    total = sum(values)
    return tuple(v / total for v in values)


class Ensemble:
    """``models`` averaged with ``weights`` (equal when ``None``); duck-types as a
    :class:`CloudModel` for the tiled inference (``info``, ``path``, ``predict``)."""

    def __init__(self, models: Sequence[CloudModel], weights: Sequence[float] | None = None):
        if not models:
            raise ModelError("An ensemble needs at least one model.")
        paths = [os.path.normcase(os.path.realpath(m.path)) for m in models]
        if len(set(paths)) != len(paths):
            twice = next(m.path for m, p in zip(models, paths) if paths.count(p) > 1)
            raise ModelError(
                f"The model '{twice}' is given twice; to count a model more, give it a larger "
                "weight."
            )
        self.members = tuple(models)
        self.warnings = check_agreement(self.members)
        try:
            self.weights = check_weights(weights, len(models))
        except ValueError as exc:
            raise ModelError(f"Ensemble weights: {exc}.") from None
        self.info = self._combined_info()

    def __len__(self) -> int:
        return len(self.members)

    @property
    def equal_weights(self) -> bool:
        return max(self.weights) - min(self.weights) < 1e-12

    def _combined_info(self) -> ModelInfo:
        if len(self.members) == 1:
            return self.members[0].info
        infos = [m.info for m in self.members]
        return dataclasses.replace(
            infos[0],
            name=f"ensemble of {len(infos)} models",
            version=" + ".join(f"{i.name} {i.version}" for i in infos),
            threshold=self.mean_threshold,
            recommended_overlap=max(i.recommended_overlap for i in infos),
            reference=None,  # each member matches to its own reference
            training={},
            metrics={},
        )

    @property
    def mean_threshold(self) -> float:
        return float(sum(w * m.info.threshold for w, m in zip(self.weights, self.members)))

    def threshold_reason(self) -> str:
        """Why the default threshold is what it is, in words for the log."""
        if len(self.members) == 1:
            return "the model's default"
        shown = ", ".join(f"{m.info.threshold:g}" for m in self.members)
        kind = "mean" if self.equal_weights else "weighted mean"
        return f"{kind} of the {len(self.members)} models' thresholds ({shown})"

    @property
    def path(self) -> str:
        return " + ".join(m.path for m in self.members)

    @property
    def execution_provider(self) -> str:
        return ", ".join(sorted({m.execution_provider for m in self.members}))

    def describe(self) -> list[dict]:
        """One entry per member (for the statistics JSON)."""
        return [
            {
                "name": m.info.name,
                "version": m.info.version,
                "path": m.path,
                "weight": round(w, 6),
                "threshold": m.info.threshold,
                "execution_provider": m.execution_provider,
            }
            for m, w in zip(self.members, self.weights)
        ]

    def predictor(self, prepare: Sequence[Prepare | None] | None = None):
        """``predict`` of the ensemble; ``prepare[i]`` (if given) transforms the tiles member
        ``i`` sees (e.g. histogram matching to that member's reference)."""
        prepare = list(prepare) if prepare is not None else [None] * len(self.members)
        members = [
            m.predict if p is None else (lambda tiles, m=m, p=p: m.predict(p(tiles)))
            for m, p in zip(self.members, prepare)
        ]
        if len(members) == 1:
            return members[0]
        weights = self.weights

        def predict(tiles: np.ndarray) -> np.ndarray:
            total = None
            for w, member in zip(weights, members):
                prob = member(tiles).astype(np.float64) * w
                total = prob if total is None else total + prob
            return np.clip(total, 0.0, 1.0).astype(np.float32)

        return predict

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        return self.predictor()(tiles)
