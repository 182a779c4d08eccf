"""The one wrapper around an ONNX cloud model: open, validate the contract, run batches.

onnxruntime is imported lazily so the plugin can still list its algorithm and explain what is
missing when onnxruntime is not installed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qgis_cloudmask import dependencies
from qgis_cloudmask.core import contract, tiling
from qgis_cloudmask.core.histogram import Reference


class ModelError(Exception):
    """A model that cannot be used; the message is meant for a GIS user."""


#: Smallest tile a model may declare (smaller ones cannot see a cloud's context).
MIN_TILE_SIZE = 16
#: How far outside 0..1 a probability may stray (float rounding of a sigmoid) before the model
#: is refused; values within it are clipped.
PROBABILITY_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ModelInfo:
    """What the ONNX metadata says about a model (parsed once, from one place)."""

    name: str
    version: str
    bands: tuple[str, ...]
    input_kind: str
    tile_size: int
    recommended_overlap: int
    threshold: float
    resolution_m: float
    classes: dict[str, str]
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: reference quantiles of the training data (histogram matching), if the model has them
    reference: Reference | None = None

    @property
    def band_roles(self) -> tuple[str, ...]:
        """Input channel order as roles ("red", "green", "blue", "nir")."""
        return tuple(contract.BAND_ROLES[b] for b in self.bands)


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(
            "The Python package 'onnxruntime' is not installed, so the cloud model cannot run. "
            + dependencies.install_hint()
        ) from exc
    return onnxruntime


#: Execution providers in order of preference; onnxruntime falls back to the next one.
PREFERRED_PROVIDERS = (
    "CUDAExecutionProvider",
    "CoreMLExecutionProvider",
    "DmlExecutionProvider",
    "CPUExecutionProvider",
)


#: onnxruntime session configuration entries of every session (read when a session is made).
#: Intra-op threads do not spin between calls: spinning threads keep the cores busy while the
#: pipeline's reading and writing threads (or other processes) need them. 4096 x 4096 on 2
#: cores: with another process busy, batch 4, 4.71 s spinning against 3.74 s not; on a quiet
#: machine, batch 8, 3.47 s against 3.52 s, within noise (docs/speed.md).
SESSION_CONFIG: dict[str, str] = {"session.intra_op.allow_spinning": "0"}

#: The models the plugin bundles, by name (file names in ``models/``): the standard model
#: (float32) and the same network quantized to int8 (``make quantize``: about 1.7 times faster
#: on a CPU, the same IoU on the dev chips, 0.1 points more false positives on clear scenes;
#: docs/speed.md). Their order is BUNDLED_MODEL's in the Processing algorithm.
BUNDLED_MODELS = {"standard": "cloudmask.onnx", "fast": "cloudmask-int8.onnx"}

#: ``device`` values: "auto" = the first of :data:`PREFERRED_PROVIDERS` this onnxruntime
#: offers (a GPU build: onnxruntime-gpu, -directml, CoreML on macOS), "cpu" = CPU only.
DEVICES = ("auto", "cpu")


def providers(ort, device: str = "auto") -> list[str]:
    """Execution providers to ask onnxruntime for, in order (it falls back along the list)."""
    if device not in DEVICES:
        raise ModelError(f"Unknown device {device!r}: use one of {', '.join(DEVICES)}.")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


@dataclass(frozen=True)
class _Form:
    """What one metadata value must be: a test, and the words that tell a model author."""

    expected: str
    valid: Callable[[Any], bool]


#: The form of every contract key, checked before any value is used (a model from elsewhere
#: must fail with a sentence naming the key, not with a traceback deep in the run).
METADATA_FORMS: dict[str, _Form] = {
    "model_name": _Form('a non-empty string, e.g. "cloudmask-unet"', _is_text),
    "model_version": _Form('a non-empty string, e.g. "1.0.0"', _is_text),
    "bands": _Form(
        f"a list of the band names {', '.join(sorted(contract.BAND_ROLES))} in input channel "
        f"order, e.g. {json.dumps(list(contract.DEFAULT_BANDS))}",
        lambda v: (
            isinstance(v, list)
            and len(v) == contract.N_CHANNELS
            and all(isinstance(b, str) for b in v)
            and set(v) == set(contract.BAND_ROLES)
        ),
    ),
    "input_kind": _Form(
        " or ".join(json.dumps(k) for k in contract.SUPPORTED_INPUT_KINDS)
        + " (what this plugin feeds the model)",
        lambda v: v in contract.SUPPORTED_INPUT_KINDS,
    ),
    "tile_size": _Form(
        f"an integer number of pixels >= {MIN_TILE_SIZE}, e.g. 224",
        lambda v: _is_int(v) and v >= MIN_TILE_SIZE,
    ),
    # also checked against tile_size, by tiling.check_overlap (see parse_metadata)
    "recommended_overlap": _Form(
        "an integer number of pixels >= 0, e.g. 32", lambda v: _is_int(v) and v >= 0
    ),
    "threshold": _Form(
        "a probability strictly between 0 and 1, e.g. 0.5",
        lambda v: _is_number(v) and 0.0 < v < 1.0,
    ),
    "resolution_m": _Form("a number of metres > 0, e.g. 10", lambda v: _is_number(v) and v > 0),
    "classes": _Form(
        'a JSON object of class value -> class name (strings), e.g. {"0": "clear", "1": "cloud"}',
        lambda v: (
            isinstance(v, dict)
            and bool(v)
            and all(isinstance(k, str) and isinstance(n, str) for k, n in v.items())
        ),
    ),
    "training": _Form(
        'a JSON object (provenance), e.g. {"data": "...", "git_sha": "...", "date": "..."}',
        lambda v: isinstance(v, dict),
    ),
    "metrics": _Form(
        'a JSON object (validation figures), e.g. {"val_iou": 0.87}, or {}',
        lambda v: isinstance(v, dict),
    ),
}


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_metadata(props: dict[str, str], source: str = "the model") -> ModelInfo:
    """Validate the ONNX ``metadata_props`` against the contract and return typed values.

    Every key is checked for type and range here, so a foreign or hand-edited model fails
    with one sentence naming the key, the value seen and the form expected.
    """
    missing = [k for k in contract.REQUIRED_METADATA_KEYS if k not in props]
    if missing:
        raise ModelError(
            f"{source} does not follow the qgis_cloudmask model contract: metadata key(s) "
            f"{', '.join(repr(k) for k in missing)} missing."
        )
    values: dict[str, Any] = {}
    for key in contract.REQUIRED_METADATA_KEYS:
        form = METADATA_FORMS[key]
        try:
            values[key] = json.loads(props[key])
        except (TypeError, ValueError):
            raise ModelError(
                f"{source}: metadata {key!r} must be {form.expected} (written as JSON), got "
                f"{_shown(props[key])}, which is not valid JSON."
            ) from None
        if not form.valid(values[key]):
            raise ModelError(
                f"{source}: metadata {key!r} must be {form.expected}, got {_shown(values[key])}."
            )
    tile, overlap = values["tile_size"], values["recommended_overlap"]
    try:
        tiling.check_overlap(tile, overlap)
    except ValueError as exc:
        raise ModelError(
            f"{source}: metadata 'recommended_overlap' does not fit its {tile}-px tiles: {exc}."
        ) from None
    reference = None
    key = contract.REFERENCE_QUANTILES_KEY
    if key in props:
        try:
            reference = Reference.from_metadata(json.loads(props[key]), tuple(values["bands"]))
        except (TypeError, ValueError) as exc:
            detail = "it is not valid JSON" if isinstance(exc, json.JSONDecodeError) else exc
            raise ModelError(
                f"{source}: the optional metadata {key!r} (reference quantiles for histogram "
                f"matching) is not usable: {detail}. Re-export the model, or remove the key."
            ) from None
    return ModelInfo(
        name=values["model_name"].strip(),
        version=values["model_version"].strip(),
        bands=tuple(values["bands"]),
        input_kind=values["input_kind"],
        tile_size=tile,
        recommended_overlap=overlap,
        threshold=float(values["threshold"]),
        resolution_m=float(values["resolution_m"]),
        classes=dict(values["classes"]),
        training=dict(values["training"]),
        metrics=dict(values["metrics"]),
        reference=reference,
    )


def read_info(path: str | os.PathLike) -> ModelInfo:
    """The contract metadata of a model without preparing it to run (fast: no graph
    optimisation), e.g. for the defaults a dialog shows."""
    path = os.fspath(path)
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises several private exception types
        raise ModelError(f"'{path}' is not a usable ONNX model.") from exc
    props = session.get_modelmeta().custom_metadata_map
    return parse_metadata(props, f"The model '{os.path.basename(path)}'")


class CloudModel:
    """An onnxruntime session over a contract-conforming cloud model.

    ``predict`` takes reflectance tiles ``N x 4 x T x T`` (channel order ``info.bands``) and
    returns cloud probabilities ``N x T x T`` in 0..1.
    """

    def __init__(
        self, path: str | os.PathLike, threads: int | None = None, device: str = "auto"
    ) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ModelError(f"The model file '{self.path}' does not exist.")
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        for key, value in SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        wanted = providers(ort, device)
        #: the providers asked for, in order (``execution_provider`` is the one that runs)
        self.requested_providers = wanted
        try:
            self.session = ort.InferenceSession(self.path, sess_options=options, providers=wanted)
        except Exception as exc:  # onnxruntime raises several private exception types
            raise ModelError(
                f"'{self.path}' is not a usable ONNX model ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'})."
            ) from exc
        source = f"The model '{os.path.basename(self.path)}'"
        self.info = parse_metadata(self.session.get_modelmeta().custom_metadata_map, source)
        self._check_graph(source)

    @property
    def execution_provider(self) -> str:
        """The onnxruntime execution provider that runs the graph (e.g. CPUExecutionProvider)."""
        return self.session.get_providers()[0]

    def _check_graph(self, source: str) -> None:
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != contract.INPUT_NAME:
            raise ModelError(
                f"{source} must have exactly one input named '{contract.INPUT_NAME}', "
                f"got {[i.name for i in inputs]}."
            )
        t = self.info.tile_size
        shape = list(inputs[0].shape)
        expected = [None, contract.N_CHANNELS, t, t]
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(shape) != 4 or fixed[1:] != expected[1:]:
            raise ModelError(
                f"{source}: input '{contract.INPUT_NAME}' must have shape "
                f"[N, {contract.N_CHANNELS}, {t}, {t}], got {shape}."
            )
        if inputs[0].type != "tensor(float)":
            raise ModelError(f"{source}: input must be float32, got {inputs[0].type}.")
        outputs = {o.name: o for o in self.session.get_outputs()}
        for name, dtype in (
            (contract.PROBABILITY_OUTPUT, "tensor(float)"),
            (contract.MASK_OUTPUT, "tensor(uint8)"),
        ):
            if name not in outputs:
                raise ModelError(
                    f"{source} has no output named '{name}' (outputs: {sorted(outputs)})."
                )
            if outputs[name].type != dtype:
                raise ModelError(
                    f"{source}: output '{name}' must be {dtype}, got {outputs[name].type}."
                )

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Cloud probability for a batch of reflectance tiles (``N x 4 x T x T`` float32).

        The output is checked (see :func:`checked_probability`): a model that returns NaN or
        logits would otherwise be written as a plausible but wrong mask.
        """
        t = self.info.tile_size
        if tiles.ndim != 4 or tiles.shape[1:] != (contract.N_CHANNELS, t, t):
            raise ValueError(
                f"tiles must be N x {contract.N_CHANNELS} x {t} x {t}, got {tiles.shape}"
            )
        (prob,) = self.session.run(
            [contract.PROBABILITY_OUTPUT],
            {contract.INPUT_NAME: np.ascontiguousarray(tiles, dtype=np.float32)},
        )
        prob = np.asarray(prob, dtype=np.float32)
        if prob.shape != (tiles.shape[0], t, t):
            raise ModelError(
                f"The model '{self.path}' returned a probability of shape {prob.shape}; "
                f"expected {(tiles.shape[0], t, t)}. No output was written."
            )
        return checked_probability(prob, f"The model '{self.path}'")


def _figure(value: float) -> str:
    """A value outside 0..1 shown briefly, but never rounded onto 0 or 1 (1.00001, not 1)."""
    text = f"{value:.4g}"
    return f"{value:.8g}" if float(text) in (0.0, 1.0) else text


def checked_probability(prob: np.ndarray, source: str = "The model") -> np.ndarray:
    """``prob`` clipped to [0, 1] if it is a probability (within :data:`PROBABILITY_TOLERANCE`);
    else :class:`ModelError` saying what the model returned.

    NaN would be blended into "clear" and logits thresholded as if they were probabilities:
    both give a plausible mask that is wrong, so the run must stop instead.
    """
    lo, hi = (float(prob.min()), float(prob.max())) if prob.size else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        nan = int(np.isnan(prob).sum())
        inf = int(np.isinf(prob).sum())
        seen = " and ".join(
            text
            for count, text in (
                (nan, f"NaN (not a number) for {nan}"),
                (inf, f"infinite values for {inf}"),
            )
            if count
        )
        raise ModelError(
            f"{source} returned {seen} of {prob.size} pixels of a batch in its "
            f"'{contract.PROBABILITY_OUTPUT}' output, which must hold cloud probabilities from "
            "0 to 1. The model is broken or does not suit this input: check it (and its "
            "export) or use another model. No output was written."
        )
    tolerance = PROBABILITY_TOLERANCE
    if lo < -tolerance or hi > 1.0 + tolerance:
        if lo < -tolerance and hi > 1.0 + tolerance:
            seen = f"from {_figure(lo)} to {_figure(hi)}"
        else:
            seen = f"up to {_figure(hi)}" if hi > 1.0 + tolerance else f"down to {_figure(lo)}"
        raise ModelError(
            f"{source} returned values {seen} in its '{contract.PROBABILITY_OUTPUT}' output: "
            "logits (or scores), not probabilities from 0 to 1 — export the model with a "
            "sigmoid (or softmax) on that output. No output was written."
        )
    if lo < 0.0 or hi > 1.0:
        np.clip(prob, 0.0, 1.0, out=prob)
    return prob
