"""Which Python runs pip for QGIS and with which command, per platform; and a real pip install
of a throw-away local wheel with the command the plugin builds (no network)."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from qgis_cloudmask import dependencies
from qgis_cloudmask.dependencies import ONNXRUNTIME_SPEC, Facts
from tests.support.wheels import write_wheel

REPO = Path(__file__).resolve().parents[2]


def linux(**kw) -> Facts:
    base = dict(
        platform="linux",
        executable="/usr/bin/python3",
        prefix="/usr",
        exec_prefix="/usr",
        version=(3, 11),
        existing=frozenset({"/usr/bin/python3", "/usr/bin/python3.11"}),
        user_site="/home/ana/.local/lib/python3.11/site-packages",
        purelib="/usr/local/lib/python3.11/dist-packages",
    )
    return Facts(**{**base, **kw})


OSGEO4W = r"C:\OSGeo4W\apps\Python312"
STANDALONE = r"C:\Program Files\QGIS 3.34.1\apps\Python312"
CASES = {
    # Debian 12: QGIS's embedded Python looks "python3" up on PATH.
    "debian-managed": (
        linux(externally_managed=True),
        ["/usr/bin/python3.11", "--user", "--break-system-packages"],
    ),
    "linux-not-managed": (
        linux(version=(3, 10), existing=frozenset({"/usr/bin/python3", "/usr/bin/python3.10"})),
        ["/usr/bin/python3.10", "--user"],
    ),
    "linux-qgis-binary": (
        linux(executable="/usr/bin/qgis", externally_managed=True),
        ["/usr/bin/python3.11", "--user", "--break-system-packages"],
    ),
    "linux-qgis-bin-only-python3": (
        linux(executable="/usr/bin/qgis.bin", existing=frozenset({"/usr/bin/python3"})),
        ["/usr/bin/python3", "--user"],
    ),
    # PATH found another Python (seen on a machine with pyenv): not QGIS's, so not used.
    "linux-foreign-python-on-path": (
        linux(executable="/home/ana/.pyenv/shims/python3", externally_managed=True),
        ["/usr/bin/python3.11", "--user", "--break-system-packages"],
    ),
    "linux-venv": (
        linux(
            executable="/home/ana/venv/bin/python",
            prefix="/home/ana/venv",
            exec_prefix="/home/ana/venv",
            in_venv=True,
            prefix_writable=True,
            existing=frozenset({"/home/ana/venv/bin/python", "/home/ana/venv/bin/python3.11"}),
        ),
        ["/home/ana/venv/bin/python3.11"],
    ),
    "linux-conda-writable": (
        linux(
            executable="/opt/conda/bin/qgis",
            prefix="/opt/conda",
            exec_prefix="/opt/conda",
            prefix_writable=True,
            existing=frozenset({"/opt/conda/bin/python3.11", "/usr/bin/python3.11"}),
        ),
        ["/opt/conda/bin/python3.11"],
    ),
    "linux-root-on-debian-still-user": (
        linux(externally_managed=True, prefix_writable=True),
        ["/usr/bin/python3.11", "--user", "--break-system-packages"],
    ),
    "windows-osgeo4w": (
        Facts(
            platform="win32",
            executable=r"C:\OSGeo4W\bin\qgis-bin.exe",
            prefix=OSGEO4W,
            exec_prefix=OSGEO4W,
            version=(3, 12),
            existing=frozenset({OSGEO4W + r"\python.exe", OSGEO4W + r"\python3.exe"}),
        ),
        [OSGEO4W + r"\python.exe", "--user"],
    ),
    "windows-osgeo4w-python3-only": (
        Facts(
            platform="win32",
            executable=r"C:\OSGeo4W\bin\qgis-ltr-bin.exe",
            prefix=OSGEO4W,
            exec_prefix=OSGEO4W,
            version=(3, 12),
            existing=frozenset({OSGEO4W + r"\python3.exe"}),
        ),
        [OSGEO4W + r"\python3.exe", "--user"],
    ),
    "windows-standalone-writable": (
        Facts(
            platform="win32",
            executable=r"C:\Program Files\QGIS 3.34.1\bin\qgis-ltr-bin.exe",
            prefix=STANDALONE,
            exec_prefix=STANDALONE,
            version=(3, 12),
            prefix_writable=True,
            existing=frozenset({STANDALONE + r"\python.exe"}),
        ),
        [STANDALONE + r"\python.exe"],
    ),
    "macos-bundle": (
        Facts(
            platform="darwin",
            executable="/Applications/QGIS-LTR.app/Contents/MacOS/QGIS",
            prefix="/Applications/QGIS-LTR.app/Contents/Frameworks",
            exec_prefix="/Applications/QGIS-LTR.app/Contents/Frameworks",
            version=(3, 9),
            existing=frozenset({"/Applications/QGIS-LTR.app/Contents/MacOS/bin/python3"}),
        ),
        ["/Applications/QGIS-LTR.app/Contents/MacOS/bin/python3", "--user"],
    ),
    "nothing-found": (linux(existing=frozenset()), ["python3", "--user"]),
}


@pytest.mark.parametrize(("facts", "expected"), CASES.values(), ids=CASES.keys())
def test_interpreter_and_command_per_platform(facts, expected):
    python, *flags = expected
    assert dependencies.interpreter(facts) == python
    assert dependencies.pip_command(facts) == [
        python,
        "-m",
        "pip",
        "install",
        *flags,
        ONNXRUNTIME_SPEC,
    ]


def test_target_replaces_user_and_pep668_flags():
    facts = linux(externally_managed=True)
    assert dependencies.pip_command(facts, target="/tmp/site", requirement="pkg") == [
        "/usr/bin/python3.11",
        *("-m", "pip", "install", "--target", "/tmp/site", "pkg"),
    ]


def test_manual_command_is_quoted_for_the_shell():
    posix = linux(externally_managed=True)
    line = dependencies.manual_command(posix)
    assert line == (
        "/usr/bin/python3.11 -m pip install --user --break-system-packages 'onnxruntime>=1.16'"
    )
    assert shlex.split(line) == dependencies.pip_command(posix)
    windows = CASES["windows-standalone-writable"][0]
    assert dependencies.manual_command(windows) == (
        r'"C:\Program Files\QGIS 3.34.1\apps\Python312\python.exe" -m pip install '
        '"onnxruntime>=1.16"'
    )
    assert "OSGeo4W Shell" in dependencies.where_to_run(windows)


def test_install_hint_names_the_button_and_the_exact_command():
    facts = linux(externally_managed=True)
    hint = dependencies.install_hint(facts)
    assert "'Install onnxruntime'" in hint
    assert f"`{dependencies.manual_command(facts)}`" in hint
    assert "restart QGIS" in hint
    no_pip = dependencies.install_hint(linux(pip_available=False))
    assert no_pip.startswith("pip is not installed") and "sudo apt install python3-pip" in no_pip


def test_explanation_for_debian_covers_the_flag_user_site_and_apt():
    text = dependencies.explanation(linux(externally_managed=True))
    for needle in (
        "--break-system-packages",
        "/home/ana/.local/lib/python3.11/site-packages",
        "~/.local",
        "PEP 668",
        "no python3-onnxruntime package",
        "/usr/bin/python3.11 -m pip uninstall --break-system-packages onnxruntime",
    ):
        assert needle in text
    assert "--break-system-packages" not in dependencies.explanation(linux())


def test_spec_matches_requirements_txt():
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    specs = [line.split("#")[0].strip() for line in lines]
    assert ONNXRUNTIME_SPEC in specs


@pytest.mark.parametrize(
    ("facts", "target", "expected"),
    [
        (linux(), None, True),  # first --user install: ~/.local/... did not exist at start-up
        (linux(sys_path=("/home/ana/.local/lib/python3.11/site-packages/",)), None, False),
        (linux(in_venv=True, sys_path=("/usr/local/lib/python3.11/dist-packages",)), None, False),
        (linux(sys_path=("/tmp/site",)), "/tmp/site", False),
        (linux(), "/tmp/site", True),
    ],
)
def test_restart_needed(facts, target, expected):
    assert dependencies.restart_needed(facts, target) is expected


def test_externally_managed_marker(tmp_path):
    assert not dependencies.is_externally_managed(str(tmp_path), in_venv=False)
    (tmp_path / "EXTERNALLY-MANAGED").write_text("[externally-managed]\n")
    assert dependencies.is_externally_managed(str(tmp_path), in_venv=False)
    assert not dependencies.is_externally_managed(str(tmp_path), in_venv=True)


def test_current_facts_pick_an_existing_python_of_this_version():
    facts = dependencies.current_facts()
    python = dependencies.interpreter(facts)
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == str(tuple(sys.version_info[:2]))


def test_module_imports_neither_qgis_nor_osgeo_nor_onnxruntime():
    code = (
        "import sys, qgis_cloudmask.dependencies\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('qgis', 'osgeo', 'onnxruntime', 'numpy'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def tiny_name(request):
    """A package name no other test (or sys.modules) has seen; unloaded afterwards."""
    name = "cmtiny_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    yield name
    sys.modules.pop(name, None)


def test_real_pip_install_into_a_target(tmp_path, tiny_name):
    wheels = write_wheel(tmp_path / "wheels", tiny_name).parent
    site = tmp_path / "site"
    cmd = dependencies.pip_command(
        dependencies.current_facts(), target=site, requirement=tiny_name
    ) + ["--no-index", "--find-links", str(wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (site / tiny_name / "__init__.py").read_text() == "VALUE = '0.1'\n"
    assert (site / f"{tiny_name}-0.1.dist-info" / "METADATA").is_file()


def test_importable_without_restart_only_when_the_folder_was_on_sys_path(
    tmp_path, tiny_name, monkeypatch
):
    wheels = write_wheel(tmp_path / "wheels", tiny_name).parent
    on_path, off_path = tmp_path / "on_path", tmp_path / "off_path"
    on_path.mkdir()  # like ~/.local/lib/python3.X/site-packages existing at QGIS start-up
    monkeypatch.syspath_prepend(str(on_path))
    assert not dependencies.is_installed(tiny_name)
    for site in (off_path, on_path):
        cmd = dependencies.pip_command(
            dependencies.current_facts(), target=site, requirement=tiny_name
        ) + ["--no-index", "--find-links", str(wheels)]
        subprocess.run(cmd, capture_output=True, check=True, timeout=300)
        if site == off_path:
            assert not dependencies.importable_now(tiny_name)
    assert dependencies.importable_now(tiny_name)
    assert sys.modules[tiny_name].__file__ == str(on_path / tiny_name / "__init__.py")
