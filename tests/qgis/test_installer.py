"""The install offer in the message bar, consent, and pip run end to end in a QgsTask.

pip installs a throw-away local wheel into a temporary folder (``--no-index``): no network, and
the checked module name is a parameter, so nothing is mocked.
"""

from __future__ import annotations

import hashlib
import sys
import time

import pytest
from qgis.core import Qgis, QgsApplication

from qgis_cloudmask import dependencies
from qgis_cloudmask.installer import BUTTON_TEXT, MISSING_TEXT, TITLE, OnnxruntimeInstaller
from tests.support.wheels import write_wheel

LEVEL = Qgis.MessageLevel


@pytest.fixture
def bar(qgis_iface):
    """The stub iface's message bar, emptied before and after each test."""
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    bar.clear_messages()
    yield bar
    bar.clearWidgets()
    bar.clear_messages()


@pytest.fixture
def tiny_name(request):
    name = "cmtinyq_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    yield name
    sys.modules.pop(name, None)


class Consent:
    """A recorded answer to the consent question."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []

    def __call__(self, title: str, text: str) -> bool:
        self.asked.append((title, text))
        return self.answer


def local_install(tmp_path, name: str, requirement: str | None = None) -> list[str]:
    """The plugin's pip command, aimed at a temporary target and a local wheel folder."""
    wheels = write_wheel(tmp_path / "wheels", name).parent
    cmd = dependencies.pip_command(
        dependencies.current_facts(), target=tmp_path / "site", requirement=requirement or name
    )
    return [*cmd, "--no-index", "--find-links", str(wheels)]


def wait_for(installer: OnnxruntimeInstaller, timeout: float = 240.0) -> str:
    deadline = time.monotonic() + timeout
    while installer.outcome is None:
        assert time.monotonic() < deadline, "the pip task did not finish in time"
        QgsApplication.processEvents()
        time.sleep(0.02)
    return installer.outcome


def shown_item(bar):
    items = bar.items()
    assert len(items) == 1
    return items[0]


def test_missing_module_shows_the_offer_with_a_button(qgis_iface, bar):
    installer = OnnxruntimeInstaller(qgis_iface, module="cm_no_such_module_xyz")
    assert installer.check()
    item = shown_item(bar)
    assert item.title() == TITLE
    assert item.text() == MISSING_TEXT
    assert item.text().startswith("needs the Python package onnxruntime")
    assert item.level() == LEVEL.Warning
    buttons = [b for b in item.children() if b is installer.button]
    assert buttons and buttons[0].text() == BUTTON_TEXT == "Install onnxruntime"
    installer.remove_message()
    assert bar.items() == []


def test_installed_module_shows_nothing(qgis_iface, bar):
    assert not OnnxruntimeInstaller(qgis_iface, module="json").check()
    assert bar.items() == []


def test_declining_consent_runs_nothing(qgis_iface, bar, tmp_path, tiny_name):
    consent = Consent(False)
    installer = OnnxruntimeInstaller(
        qgis_iface, module=tiny_name, command=local_install(tmp_path, tiny_name), confirm=consent
    )
    installer.check()
    installer.button.click()
    assert len(consent.asked) == 1
    title, text = consent.asked[0]
    assert title == "Cloud mask: Install onnxruntime"
    assert installer.command_line in text
    assert dependencies.explanation(installer.facts) in text
    assert installer.task is None and installer.outcome is None
    assert not (tmp_path / "site").exists()
    assert shown_item(bar).text() == MISSING_TEXT


def test_install_end_to_end_ready_now(qgis_iface, bar, tmp_path, tiny_name, monkeypatch):
    (tmp_path / "site").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))  # the folder QGIS saw at start-up
    consent = Consent(True)
    installer = OnnxruntimeInstaller(
        qgis_iface, module=tiny_name, command=local_install(tmp_path, tiny_name), confirm=consent
    )
    assert installer.check()
    installer.button.click()
    assert consent.asked and installer.task is not None
    assert wait_for(installer) == "ready"
    assert (tmp_path / "site" / tiny_name / "__init__.py").is_file()
    assert bar.get_messages(LEVEL.Success) == [
        "Cloud mask:onnxruntime is installed and ready: run Processing ▸ Cloud mask ▸ "
        "Detect clouds (Sentinel-2)."
    ]
    assert bar.items() == []  # the offer is gone
    assert any(line.startswith("Successfully installed") for line in installer.task.lines)


def test_install_end_to_end_restart_needed(qgis_iface, bar, tmp_path, tiny_name):
    installer = OnnxruntimeInstaller(
        qgis_iface,
        module=tiny_name,
        command=local_install(tmp_path, tiny_name),
        confirm=Consent(True),
    )
    assert installer.install()
    assert wait_for(installer) == "restart"
    assert (tmp_path / "site" / tiny_name / "__init__.py").is_file()
    assert bar.get_messages(LEVEL.Success) == [
        "Cloud mask:onnxruntime is installed. Restart QGIS to use it."
    ]


def test_failed_install_shows_the_manual_command(qgis_iface, bar, tmp_path, tiny_name):
    missing = "cm-no-such-package-xyz"
    installer = OnnxruntimeInstaller(
        qgis_iface,
        module=tiny_name,
        command=local_install(tmp_path, tiny_name, requirement=missing),
        confirm=Consent(True),
    )
    installer.check()
    assert installer.install()
    assert wait_for(installer) == "failed"
    (message,) = bar.get_messages(LEVEL.Critical)
    assert message.startswith("Cloud mask:Installing onnxruntime failed (pip exited with code 1")
    assert f"Run {installer.command_line} in a terminal, then restart QGIS." in message
    assert missing in installer.command_line
    assert any("No matching distribution" in line for line in installer.task.lines)
    assert bar.items() == []
    assert not (tmp_path / "site" / tiny_name).exists()


def test_missing_interpreter_is_reported_not_raised(qgis_iface, bar, tmp_path, tiny_name):
    installer = OnnxruntimeInstaller(
        qgis_iface,
        module=tiny_name,
        command=[str(tmp_path / "no-python"), "-m", "pip", "install", tiny_name],
        confirm=Consent(True),
    )
    assert installer.install()
    assert wait_for(installer) == "failed"
    (message,) = bar.get_messages(LEVEL.Critical)
    assert "FileNotFoundError" in message


def test_cancelling_kills_pip(qgis_iface, bar, tmp_path, tiny_name):
    # A command that would run for a minute stands in for a slow download.
    installer = OnnxruntimeInstaller(
        qgis_iface,
        module=tiny_name,
        command=[
            sys.executable,
            "-c",
            "import time; print('Collecting x', flush=True); time.sleep(60)",
        ],
        confirm=Consent(True),
    )
    assert installer.install()
    deadline = time.monotonic() + 30
    while not installer.task.lines[1:]:
        assert time.monotonic() < deadline
        QgsApplication.processEvents()
        time.sleep(0.02)
    started = time.monotonic()
    installer.task.cancel()
    assert wait_for(installer, timeout=20) == "cancelled"
    assert time.monotonic() - started < 10
    (message,) = bar.get_messages(LEVEL.Warning)
    assert "was cancelled" in message and installer.command_line in message


class RealBarIface:
    """Just enough of an iface around a real QgsMessageBar (the stub's records pushMessage
    calls instead of showing them), to check the calls QGIS itself receives."""

    def __init__(self) -> None:
        from qgis.gui import QgsMessageBar

        self.bar = QgsMessageBar()

    def messageBar(self):  # noqa: N802
        return self.bar

    def mainWindow(self):  # noqa: N802
        return None


@pytest.mark.parametrize("requirement", [None, "cm-no-such-package-xyz"])
def test_results_on_a_real_message_bar(tmp_path, tiny_name, requirement):
    iface = RealBarIface()
    installer = OnnxruntimeInstaller(
        iface,
        module=tiny_name,
        command=local_install(tmp_path, tiny_name, requirement),
        confirm=Consent(True),
    )
    assert installer.check()
    assert installer.install()
    assert "Installing onnxruntime with pip" in shown_item(iface.bar).text()
    assert not installer.button.isEnabled()
    outcome = wait_for(installer)
    item = shown_item(iface.bar)
    assert item.title() == TITLE
    if requirement is None:
        assert outcome == "restart" and item.level() == LEVEL.Success
        assert "Restart QGIS" in item.text()
    else:
        assert outcome == "failed" and item.level() == LEVEL.Critical
        assert installer.command_line in item.text()
