"""notebooks/cpu_inference.ipynb runs top to bottom on the sample it writes, from a checkout and
from the plugin zip (as in Colab), and its plain-NumPy inference agrees with the pipeline's.

The notebook runs in a kernel of this interpreter (the venv's) through nbclient, in a temporary
working folder, with its parameters set through environment variables.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.support import package

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO / "notebooks" / "cpu_inference.ipynb"
KERNEL = "qgis-cloudmask-tests"
CELL_TIMEOUT_S = 300
#: What the notebook writes into its output folder.
OUTPUTS = (
    "sample_S2_L2A.tif",
    "mask.tif",
    "probability.tif",
    "stats.json",
    "quicklook.png",
    "agreement.json",
)

needs_model = pytest.mark.skipif(
    not (REPO / "models" / "cloudmask.onnx").is_file(), reason="no bundled model in models/"
)


@pytest.fixture
def kernel(tmp_path, monkeypatch) -> str:
    """A kernelspec that starts this interpreter, found first; Jupyter's and IPython's state in
    tmp_path; no notebook parameter left over from the caller's environment."""
    jupyter = tmp_path / "jupyter"
    spec = jupyter / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "qgis_cloudmask tests", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    for name in (
        "CLOUDMASK_NOTEBOOK_INPUT",
        "CLOUDMASK_NOTEBOOK_RADIOMETRY",
        "CLOUDMASK_PLUGIN_ZIP",
        "CLOUDMASK_REPO_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
    return KERNEL


def execute(kernel: str, workdir: Path) -> nbformat.NotebookNode:
    """Run every cell in ``workdir``; a failing cell raises ``CellExecutionError``."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=kernel,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return notebook


def shows_a_figure(notebook: nbformat.NotebookNode) -> bool:
    return any(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def check_results(out: Path) -> dict:
    """The outputs exist, NumPy and the pipeline agree, the sample has clouds; the agreement."""
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["max_abs_diff"] <= 1e-5
    assert agreement["mask_differences"] == 0
    assert agreement["python"] == sys.executable  # the venv's interpreter ran the notebook
    stats = json.loads((out / "stats.json").read_text())
    assert stats["warnings"] == []
    assert agreement["cloud_percent_pipeline"] == pytest.approx(stats["cloud_percent"])
    assert agreement["cloud_percent_numpy"] == pytest.approx(stats["cloud_percent"])
    assert 5 < stats["cloud_percent"] < 50  # the sample's clouds are found, its ground is not
    return agreement


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert NOTEBOOK.stat().st_size < 50_000


@needs_model
def test_notebook_from_a_checkout_agrees_with_the_pipeline(kernel, tmp_path, monkeypatch):
    workdir, out = tmp_path / "work", tmp_path / "out"
    workdir.mkdir()
    monkeypatch.setenv("CLOUDMASK_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("CLOUDMASK_REPO_DIR", str(REPO))

    notebook = execute(kernel, workdir)

    agreement = check_results(out)
    assert agreement["plugin"] == str(REPO / "qgis_cloudmask")
    assert shows_a_figure(notebook)


@needs_model
def test_notebook_from_the_plugin_zip_as_in_colab(kernel, tmp_path, monkeypatch):
    """The zip of `make package` uploaded into the working folder (Colab's /content) is found,
    unpacked and used; nothing points the kernel at the checkout."""
    workdir, out = tmp_path / "content", tmp_path / "out"
    workdir.mkdir()
    package.build(workdir)
    monkeypatch.setenv("CLOUDMASK_NOTEBOOK_OUT", str(out))
    monkeypatch.delenv("PYTHONPATH", raising=False)

    execute(kernel, workdir)

    agreement = check_results(out)
    assert agreement["plugin"] == str(out / "plugin" / "qgis_cloudmask")
