"""The QGIS side of installing onnxruntime: a message bar offer, consent, pip in a QgsTask.

Thin on purpose: which Python, which command and why live in the pure ``dependencies``
module. Nothing here runs at import time, from ``classFactory`` or from ``initProcessing``
(qgis_process): only ``initGui`` calls ``check``, and pip runs only after the user clicked the
button and agreed to the exact command.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from typing import Callable

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask
from qgis.PyQt import sip
from qgis.PyQt.QtWidgets import QMessageBox, QPushButton

from qgis_cloudmask import dependencies

TITLE = "Cloud mask"
LOG_TAG = "Cloud mask"
BUTTON_TEXT = "Install onnxruntime"
MISSING_TEXT = (
    "needs the Python package onnxruntime to run its model, and the Python that QGIS uses does "
    "not have it."
)

#: Tasks in flight: QGIS owns the C++ side, but a Python QgsTask subclass whose wrapper is
#: garbage collected while running crashes QGIS, whatever happens to the plugin meanwhile.
_RUNNING: set[PipTask] = set()

#: pip output line starts and the progress (percent) they stand for.
_PROGRESS = (
    ("Collecting", 10.0),
    ("Downloading", 30.0),
    ("Installing collected packages", 80.0),
    ("Successfully installed", 100.0),
)


def ask_user(parent) -> Callable[[str, str], bool]:
    """The default consent: a Yes/No question, No being the default button."""

    def confirm(title: str, text: str) -> bool:
        answer = QMessageBox.question(
            parent, title, text, QMessageBox.Yes | QMessageBox.No, QMessageBox.No
        )
        return answer == QMessageBox.Yes

    return confirm


class PipTask(QgsTask):
    """Runs one pip command in a worker thread, logging its output; cancel kills pip.

    ``on_done(task, ok)`` is called in the main thread when the task ends.
    """

    def __init__(self, command: list[str], on_done: Callable[[PipTask, bool], None]) -> None:
        super().__init__("Installing onnxruntime with pip")
        self.command = list(command)
        self.on_done = on_done
        self.lines: list[str] = []
        self.returncode: int | None = None
        self.error = ""
        self.cancelled = False

    def run(self) -> bool:
        try:
            return self._run()
        except Exception as exc:  # e.g. the interpreter does not exist: report, never raise
            self.error = f"{type(exc).__name__}: {exc}"
            return False

    def _run(self) -> bool:
        self._log("$ " + " ".join(self.command))
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # one process group, killed as a whole
        proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            **kwargs,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        while True:
            if self.isCanceled():
                self.cancelled = True
                _kill(proc)
                proc.wait()
                return False
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self._log(line)
        self.returncode = proc.wait()
        return self.returncode == 0

    def _log(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        self.lines.append(line)
        QgsMessageLog.logMessage(line, LOG_TAG, Qgis.MessageLevel.Info)
        for start, percent in _PROGRESS:
            if line.startswith(start) and percent > self.progress():
                self.setProgress(percent)

    def finished(self, result: bool) -> None:
        _RUNNING.discard(self)
        self.cancelled = self.cancelled or (not result and self.isCanceled())
        self.on_done(self, result)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _kill(proc: subprocess.Popen) -> None:
    try:
        if sys.platform == "win32":
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


class OnnxruntimeInstaller:
    """Offers to install onnxruntime when ``module`` cannot be found, and reports the outcome.

    ``module``, ``command`` and ``confirm`` are parameters so tests drive the real flow with a
    throw-away package and target folder instead of mocks. ``outcome`` ends as "ready",
    "restart", "failed" or "cancelled".
    """

    def __init__(
        self,
        iface,
        module: str = "onnxruntime",
        command: list[str] | None = None,
        facts: dependencies.Facts | None = None,
        confirm: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.iface = iface
        self.module = module
        self.facts = facts or dependencies.current_facts()
        self.command = list(command) if command else dependencies.pip_command(self.facts)
        self.confirm = confirm or ask_user(iface.mainWindow())
        self.item = None
        self.button: QPushButton | None = None
        self.task: PipTask | None = None
        self.outcome: str | None = None

    @property
    def command_line(self) -> str:
        """The command as the user would type it (shown in the dialog and on failure)."""
        return dependencies.quote_command(self.facts.platform, self.command)

    def check(self) -> bool:
        """Show the message bar offer if ``module`` is missing; True when it was shown."""
        if dependencies.is_installed(self.module):
            return False
        bar = self.iface.messageBar()
        self.item = bar.createMessage(TITLE, MISSING_TEXT)
        self.button = QPushButton(BUTTON_TEXT, self.item)
        self.button.clicked.connect(self.install)
        self.item.layout().addWidget(self.button)
        bar.pushWidget(self.item, Qgis.MessageLevel.Warning)
        return True

    def consent_text(self) -> str:
        text = (
            f"Install onnxruntime into the Python that QGIS uses with this command?\n\n"
            f"{self.command_line}\n\n{dependencies.explanation(self.facts)}"
        )
        if dependencies.restart_needed(self.facts):
            text += "\n\nQGIS needs a restart afterwards to see the new package."
        return text

    def install(self) -> bool:
        """Ask for consent, then start pip in the background; False when nothing was started."""
        if self.task is not None and self.outcome is None:
            return False
        if not self.facts.pip_available:
            self._report_failure(dependencies.pip_missing_hint(self.facts))
            return False
        if not self.confirm(f"{TITLE}: {BUTTON_TEXT}", self.consent_text()):
            return False
        self.outcome = None
        self.task = PipTask(self.command, self._finished)
        _RUNNING.add(self.task)
        if self._item_shown():
            self.item.setText("Installing onnxruntime with pip… (progress in the task bar below)")
            self.button.setEnabled(False)
        QgsApplication.taskManager().addTask(self.task)
        return True

    def _finished(self, task: PipTask, ok: bool) -> None:
        self.remove_message()
        bar = self.iface.messageBar()
        if ok and dependencies.importable_now(self.module):
            self.outcome = "ready"
            bar.pushMessage(
                TITLE,
                "onnxruntime is installed and ready: run Processing ▸ Cloud mask ▸ "
                "Detect clouds (Sentinel-2).",
                level=Qgis.MessageLevel.Success,
                duration=-1,
            )
        elif ok:
            self.outcome = "restart"
            bar.pushMessage(
                TITLE,
                "onnxruntime is installed. Restart QGIS to use it.",
                level=Qgis.MessageLevel.Success,
                duration=0,
            )
        elif task.cancelled:
            self.outcome = "cancelled"
            bar.pushMessage(
                TITLE,
                f"Installing onnxruntime was cancelled. To install it yourself, run "
                f"{self.command_line} {dependencies.where_to_run(self.facts)}, then restart "
                f"QGIS.",
                level=Qgis.MessageLevel.Warning,
                duration=0,
            )
        else:
            reason = (
                task.error or f"pip exited with code {task.returncode}; the log has the details"
            )
            self._report_failure(f"Installing onnxruntime failed ({reason}).", task.lines)

    def _report_failure(self, reason: str, log: list[str] | None = None) -> None:
        self.outcome = "failed"
        text = (
            f"{reason} Run {self.command_line} {dependencies.where_to_run(self.facts)}, then "
            f"restart QGIS."
        )
        self.iface.messageBar().pushMessage(
            TITLE,
            text,
            "\n".join((log or [])[-60:]) or text,
            level=Qgis.MessageLevel.Critical,
            duration=0,
        )

    def _item_shown(self) -> bool:
        return self.item is not None and not sip.isdeleted(self.item)

    def remove_message(self) -> None:
        """Take the offer off the message bar (after installing, and when the plugin unloads)."""
        if self._item_shown():
            self.iface.messageBar().popWidget(self.item)
        self.item = None
        self.button = None
