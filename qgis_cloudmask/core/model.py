"""The one wrapper around an ONNX cloud model: open, validate the contract, run batches.

onnxruntime is imported lazily so the plugin can still list its algorithm and explain what is
missing when onnxruntime is not installed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qgis_cloudmask import dependencies
from qgis_cloudmask.core import contract


class ModelError(Exception):
    """A model that cannot be used; the message is meant for a GIS user."""


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


def _providers(ort) -> list[str]:
    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def parse_metadata(props: dict[str, str], source: str = "the model") -> ModelInfo:
    """Validate the ONNX ``metadata_props`` against the contract and return typed values."""
    missing = [k for k in contract.REQUIRED_METADATA_KEYS if k not in props]
    if missing:
        raise ModelError(
            f"{source} does not follow the qgis_cloudmask model contract: metadata key(s) "
            f"{', '.join(repr(k) for k in missing)} missing."
        )
    values: dict[str, Any] = {}
    for key in contract.REQUIRED_METADATA_KEYS:
        try:
            values[key] = json.loads(props[key])
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{source}: metadata key {key!r} is not valid JSON.") from exc

    bands = tuple(values["bands"]) if isinstance(values["bands"], list) else ()
    if len(bands) != contract.N_CHANNELS or set(bands) != set(contract.BAND_ROLES):
        raise ModelError(
            f"{source}: metadata 'bands' must list {sorted(contract.BAND_ROLES)} in input "
            f"order, got {values['bands']!r}."
        )
    if values["input_kind"] not in contract.SUPPORTED_INPUT_KINDS:
        raise ModelError(
            f"{source}: metadata 'input_kind' is {values['input_kind']!r}; this plugin feeds "
            f"{' or '.join(contract.SUPPORTED_INPUT_KINDS)}."
        )
    tile = values["tile_size"]
    overlap = values["recommended_overlap"]
    threshold = values["threshold"]
    if not isinstance(tile, int) or tile < 16:
        raise ModelError(f"{source}: metadata 'tile_size' must be an integer >= 16, got {tile!r}.")
    if not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ModelError(
            f"{source}: metadata 'recommended_overlap' must be an integer in [0, {tile}), "
            f"got {overlap!r}."
        )
    if not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ModelError(f"{source}: metadata 'threshold' must be in (0, 1), got {threshold!r}.")
    return ModelInfo(
        name=str(values["model_name"]),
        version=str(values["model_version"]),
        bands=bands,
        input_kind=values["input_kind"],
        tile_size=tile,
        recommended_overlap=overlap,
        threshold=float(threshold),
        resolution_m=float(values["resolution_m"]),
        classes=dict(values["classes"]),
        training=dict(values["training"]) if isinstance(values["training"], dict) else {},
        metrics=dict(values["metrics"]) if isinstance(values["metrics"], dict) else {},
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

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ModelError(f"The model file '{self.path}' does not exist.")
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                self.path, sess_options=options, providers=_providers(ort)
            )
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
        """Cloud probability for a batch of reflectance tiles (``N x 4 x T x T`` float32)."""
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
                f"The model returned a probability of shape {prob.shape}; expected "
                f"{(tiles.shape[0], t, t)}."
            )
        return prob
