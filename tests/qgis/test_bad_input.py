"""Bad input: a QgsProcessingException a GIS user understands, no traceback, and no file left
behind or changed; or, where the input is odd but usable, exactly the right answer.

The cases are the table in :mod:`tests.qgis.bad_inputs` (the catalogue of issue 8).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback

from tests.qgis.bad_inputs import CASES, Case


@pytest.fixture
def workdir(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return d


class RecordingFeedback(QgsProcessingFeedback):
    """Feedback that keeps every text the run reports (to look for tracebacks)."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        self.texts.append(error)
        super().reportError(error, fatalError)

    def pushInfo(self, info):  # noqa: N802
        self.texts.append(info)
        super().pushInfo(info)

    def pushWarning(self, warning):  # noqa: N802
        self.texts.append(warning)
        super().pushWarning(warning)

    def pushConsoleInfo(self, info):  # noqa: N802
        self.texts.append(info)
        super().pushConsoleInfo(info)

    def pushDebugInfo(self, info):  # noqa: N802
        self.texts.append(info)
        super().pushDebugInfo(info)


@contextlib.contextmanager
def message_log():
    """What QGIS writes to its message log meanwhile (Python errors in algorithms land there)."""
    seen: list[str] = []

    def keep(message, tag, level):
        seen.append(message)

    log = QgsApplication.messageLog()
    log.messageReceived.connect(keep)
    try:
        yield seen
    finally:
        log.messageReceived.disconnect(keep)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``."""
    found: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = Path(path).read_bytes()
    return found


def fails(run_alg, params, match, workdir, feedback=None):
    """Run, expect the error (without traceback), and check the work folder holds nothing new
    and nothing changed (GDAL may write an input's own .aux.xml); returns the message."""
    before = snapshot(workdir)
    with pytest.raises(QgsProcessingException, match=match) as err:
        run_alg(params, feedback=feedback)
    message = str(err.value)
    assert "Traceback" not in message, message
    after = snapshot(workdir)

    def input_aux(name: str) -> bool:
        return name.endswith(".aux.xml") and name[: -len(".aux.xml")] in before

    new = {n for n in set(after) - set(before) if not input_aux(n)}
    assert not new, f"left behind: {sorted(new)}"
    assert not set(before) - set(after), f"removed: {sorted(set(before) - set(after))}"
    changed = [n for n in before if before[n] != after[n] and not input_aux(n)]
    assert not changed, f"changed: {changed}"
    return message


def out(workdir, **extra):
    return {
        "OUTPUT": str(workdir / "mask.tif"),
        "OUTPUT_PROBABILITY": str(workdir / "p.tif"),
        "OUTPUT_STATS": str(workdir / "s.json"),
        **extra,
    }


def catalogue() -> list:
    params = []
    for case in CASES:
        marks = (
            [pytest.mark.xfail(reason=f"pending: {case.pending}", strict=False)]
            if case.pending
            else []
        )
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def test_the_catalogue_covers_enough_cases():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) >= 50
    for case in CASES:  # an error case says what, a result case checks it
        assert (case.match is None) != (case.check is None), case.id


@pytest.mark.parametrize("case", catalogue())
def test_bad_input(case: Case, run_alg, workdir, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    params = {**out(workdir), **case.make(workdir, models)}
    if case.patch:
        case.patch(monkeypatch)
    feedback = RecordingFeedback()
    if case.cancel == "before":
        feedback.cancel()
    elif case.cancel is not None:
        feedback.progressChanged.connect(lambda p: feedback.cancel() if p > case.cancel else None)
    with message_log() as logged:
        if case.match is None:
            results = run_alg(params, feedback=feedback)
            case.check(results, workdir)
        else:
            fails(run_alg, params, case.match, workdir, feedback)
    tracebacks = [t for t in feedback.texts + logged if "Traceback" in t]
    assert not tracebacks, tracebacks[0]
    if case.after:
        case.after(workdir)
