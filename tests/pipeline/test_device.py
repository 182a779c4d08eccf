"""Where the model runs: onnxruntime's execution providers, the DEVICE choice and what the run
says about it. CI machines have CPU-only onnxruntime, so the GPU cases are checked on the
provider lists and on a session whose GPU did not start (its request rewritten, see below)."""

import onnxruntime
import pytest

from qgis_cloudmask import pipeline
from qgis_cloudmask.core import model as model_mod
from qgis_cloudmask.core.ensemble import Ensemble
from qgis_cloudmask.core.model import CloudModel, ModelError
from tests.support import synthetic


class _Offering:
    """An onnxruntime module whose ``get_available_providers`` lists GPU providers (the provider
    list is all :func:`model_mod.providers` reads; no session is made from it)."""

    def __init__(self, available):
        self.available = available

    def get_available_providers(self):
        return list(self.available)


@pytest.mark.parametrize(
    ("available", "device", "expected"),
    [
        (["CPUExecutionProvider"], "auto", ["CPUExecutionProvider"]),
        (
            ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"],
            "auto",
            ["CUDAExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["DmlExecutionProvider", "CPUExecutionProvider"],
            "auto",
            ["DmlExecutionProvider", "CPUExecutionProvider"],
        ),
        (
            ["CoreMLExecutionProvider", "CPUExecutionProvider"],
            "auto",
            ["CoreMLExecutionProvider", "CPUExecutionProvider"],
        ),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu", ["CPUExecutionProvider"]),
    ],
)
def test_the_gpu_comes_first_unless_cpu_is_forced(available, device, expected):
    assert model_mod.providers(_Offering(available), device) == expected


def test_this_machine_runs_on_the_cpu_and_an_unknown_device_is_refused(pixel_model):
    model = CloudModel(pixel_model, device="cpu")
    assert model.execution_provider == "CPUExecutionProvider"
    assert model.requested_providers == ["CPUExecutionProvider"]
    auto = CloudModel(pixel_model)
    assert auto.requested_providers == model_mod.providers(onnxruntime, "auto")
    with pytest.raises(ModelError, match="Unknown device 'gpu'"):
        CloudModel(pixel_model, device="gpu")


def test_an_unknown_device_names_the_option_and_writes_nothing(tmp_path, pixel_model):
    src = synthetic.write_geotiff(tmp_path / "s2.tif", synthetic.sample_scene(64, 64, 1))
    with pytest.raises(pipeline.ParameterError, match=r"--device.*auto, cpu"):
        pipeline.run(
            pipeline.MaskRequest(src, str(tmp_path / "m.tif"), model=str(pixel_model), device="x")
        )
    assert not (tmp_path / "m.tif").exists()


def test_a_gpu_that_does_not_start_is_a_warning_and_the_run_goes_on(pixel_model):
    """onnxruntime falls back to the next provider when CUDA's libraries are missing; the run
    must say so. The session here is real (CPU); only its record of what was asked for is
    rewritten to what an onnxruntime-gpu without drivers would have been asked."""
    member = CloudModel(pixel_model)
    member.requested_providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    warnings: list[str] = []
    setting = pipeline._device_setting("auto", Ensemble([member]), warnings)
    assert setting.reason == "the first that starts of CUDAExecutionProvider and CPU"
    assert len(warnings) == 1
    assert "offers CUDAExecutionProvider but could not start it" in warnings[0]
    assert "runs on CPUExecutionProvider" in warnings[0] and "FORCE_CPU" in warnings[0]
