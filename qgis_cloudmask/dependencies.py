"""Which Python runs pip for the running QGIS, and the exact pip command to install onnxruntime.

Pure standard library (no qgis, osgeo or onnxruntime) so the pure core can name the command in
its error message and every decision is a table-testable function of explicit ``Facts``;
only ``current_facts`` reads the real interpreter. ``installer.py`` is the thin QGIS side.

Why this is not simply ``sys.executable -m pip``: inside QGIS ``sys.executable`` is often not
QGIS's Python. On Windows and macOS it is the QGIS binary (``qgis-bin.exe``,
``QGIS.app/Contents/MacOS/QGIS``); on Linux the embedded Python looks ``python3`` up on PATH,
which may be another Python altogether (a pyenv shim, a conda env), so it is only trusted when
it lies inside ``sys.prefix``.
"""

from __future__ import annotations

import importlib
import importlib.util
import ntpath
import os
import posixpath
import re
import shlex
import site
import sys
import sysconfig
from dataclasses import dataclass, field, replace

#: The one place the runtime requirement is spelled (requirements.txt is not in the plugin zip;
#: a unit test keeps the two equal).
ONNXRUNTIME_SPEC = "onnxruntime>=1.16"

_PYTHON_NAME = re.compile(r"python(\d+(\.\d+)?)?w?(\.exe)?", re.IGNORECASE)
_APP_BUNDLE = re.compile(r"^(.*?\.app)/Contents/")
_CMD_SPECIAL = set(' \t&|<>^()"')


@dataclass(frozen=True)
class Facts:
    """What the decisions depend on, read once from the running Python by ``current_facts``.

    ``existing`` holds the interpreter candidates (see ``candidates``) that exist on disk, so
    the choice stays a pure function. ``prefix_writable`` means pip could write into this
    Python's own site-packages (``sysconfig.get_path("purelib")``).
    """

    platform: str
    executable: str
    prefix: str
    exec_prefix: str
    version: tuple[int, int]
    existing: frozenset[str] = frozenset()
    externally_managed: bool = False
    in_venv: bool = False
    prefix_writable: bool = False
    pip_available: bool = True
    user_site: str = ""
    purelib: str = ""
    sys_path: tuple[str, ...] = field(default_factory=tuple)


def _pathmod(platform: str):
    return ntpath if platform == "win32" else posixpath


def _inside(path: str, folder: str, platform: str) -> bool:
    pm = _pathmod(platform)
    if not path or not folder:
        return False
    path, folder = pm.normcase(pm.normpath(path)), pm.normcase(pm.normpath(folder))
    return path.startswith(folder.rstrip(pm.sep) + pm.sep)


def _looks_like_python(path: str, platform: str) -> bool:
    return bool(_PYTHON_NAME.fullmatch(_pathmod(platform).basename(path)))


def _bundles(path: str, platform: str) -> list[str]:
    return _APP_BUNDLE.findall(path) if platform == "darwin" else []


def candidates(facts: Facts) -> list[str]:
    """Interpreter paths to try, best first (``existing`` is ignored here).

    ``sys.executable`` counts only when it is a Python inside ``sys.prefix``/``exec_prefix``;
    next to it, ``python3.X`` of the running version is preferred over ``python3``/``python``
    (``python3`` may point at another minor version). Then per platform: the bundle's
    ``Contents/MacOS/bin`` on macOS, ``python.exe`` in ``exec_prefix`` on Windows,
    ``<prefix>/bin`` elsewhere, and ``/usr/bin`` last on Linux.
    """
    pm = _pathmod(facts.platform)
    major, minor = facts.version
    versioned = f"python{major}.{minor}"
    exe = facts.executable
    found: list[str] = []
    exe_is_ours = _looks_like_python(exe, facts.platform) and any(
        _inside(exe, folder, facts.platform)
        for folder in (facts.prefix, facts.exec_prefix, *_bundles(exe, facts.platform))
    )
    if facts.platform == "win32":
        if exe_is_ours:
            found += [pm.join(pm.dirname(exe), "python.exe"), exe]
        for folder in (facts.exec_prefix, facts.prefix):
            found += [pm.join(folder, "python.exe"), pm.join(folder, "python3.exe")]
    else:
        if exe_is_ours:
            found += [pm.join(pm.dirname(exe), versioned), exe]
        for bundle in _bundles(exe, facts.platform):
            bundle_bin = pm.join(bundle, "Contents", "MacOS", "bin")
            found += [pm.join(bundle_bin, versioned), pm.join(bundle_bin, f"python{major}")]
        for folder in (facts.prefix, facts.exec_prefix):
            found += [pm.join(folder, "bin", versioned), pm.join(folder, "bin", f"python{major}")]
        if facts.platform.startswith("linux"):
            found += [f"/usr/bin/{versioned}", f"/usr/bin/python{major}"]
    return list(dict.fromkeys(p for p in found if p))


def interpreter(facts: Facts) -> str:
    """The Python that runs pip for this QGIS: the first existing candidate.

    When none exists the bare command name is returned, so the manual command still reads
    sensibly and the user's shell can resolve it.
    """
    for path in candidates(facts):
        if path in facts.existing:
            return path
    return "python" if facts.platform == "win32" else f"python{facts.version[0]}"


def uses_user_site(facts: Facts, target: str | os.PathLike | None = None) -> bool:
    """Whether pip gets ``--user``.

    ``--user`` is the safe default: it needs no administrator rights and never touches files
    that QGIS's installer or the distribution owns. It is left out where it is wrong or
    unnecessary: with ``--target`` (pip refuses the combination), in a virtual environment
    (its user site is invisible) and where this Python's own site-packages is writable and
    not externally managed (a per-user Windows install, a QGIS.app the user can write to,
    conda). An externally managed Python (Debian/Ubuntu) always gets ``--user``, even when
    run as root, so pip never writes below /usr.
    """
    if target is not None or facts.in_venv:
        return False
    return facts.externally_managed or not facts.prefix_writable


def pip_command(
    facts: Facts,
    target: str | os.PathLike | None = None,
    requirement: str = ONNXRUNTIME_SPEC,
) -> list[str]:
    """The argv that installs ``requirement`` into QGIS's Python (or into ``target``).

    Externally managed Pythons (PEP 668) get ``--break-system-packages`` next to ``--user``:
    without it pip refuses even user installs there. It is not needed with ``--target``, for
    which pip skips the PEP 668 check.
    """
    cmd = [interpreter(facts), "-m", "pip", "install"]
    if target is not None:
        cmd += ["--target", os.fspath(target)]
    elif uses_user_site(facts):
        cmd.append("--user")
        if facts.externally_managed:
            cmd.append("--break-system-packages")
    cmd.append(requirement)
    return cmd


def quote_command(platform: str, argv: list[str]) -> str:
    """A copy-pastable shell line: POSIX quoting, or cmd.exe quoting (OSGeo4W Shell) on Windows.

    ``>`` in the version specifier is a redirection in both shells, hence always quoted.
    """
    if platform != "win32":
        return shlex.join(argv)
    quoted = []
    for arg in argv:
        if not arg or _CMD_SPECIAL.intersection(arg):
            arg = '"' + arg.replace('"', '\\"') + '"'
        quoted.append(arg)
    return " ".join(quoted)


def manual_command(facts: Facts) -> str:
    """The install command for this platform, quoted for its usual shell."""
    return quote_command(facts.platform, pip_command(facts))


def where_to_run(facts: Facts) -> str:
    """Which terminal the manual command belongs in (the environment matters on Windows)."""
    if facts.platform == "win32":
        return "in the OSGeo4W Shell (Start menu, QGIS folder)"
    return "in a terminal"


def pip_missing_hint(facts: Facts) -> str:
    """What to do first when QGIS's Python has no pip (Debian's QGIS does not pull it in)."""
    if facts.platform.startswith("linux") and not facts.in_venv:
        return (
            "pip is not installed for QGIS's Python: install it first with "
            "`sudo apt install python3-pip` (Debian/Ubuntu; `sudo dnf install python3-pip` on "
            "Fedora)."
        )
    return (
        "pip is not installed for QGIS's Python: install it first with "
        f"`{quote_command(facts.platform, [interpreter(facts), '-m', 'ensurepip', '--user'])}`."
    )


def uninstall_command(facts: Facts, package: str = "onnxruntime") -> str:
    """How to undo the install (``pip uninstall`` takes no ``--user``; PEP 668 still applies)."""
    cmd = [interpreter(facts), "-m", "pip", "uninstall"]
    if facts.externally_managed and not facts.in_venv:
        cmd.append("--break-system-packages")
    return quote_command(facts.platform, [*cmd, package])


def explanation(facts: Facts) -> str:
    """One paragraph for the consent dialog: where the package goes and why this command."""
    return f"{_where(facts)} To remove it later, run `{uninstall_command(facts)}`."


def _where(facts: Facts) -> str:
    size = (
        "pip downloads onnxruntime (about 15 MB) and the small packages it needs from the "
        "Python Package Index (pypi.org)"
    )
    if uses_user_site(facts) and facts.externally_managed:
        return (
            f"{size} and installs them only into your user site-packages ({facts.user_site}, "
            "under ~/.local), never into system folders, so no administrator rights are needed. "
            "Debian 12 and Ubuntu 23.04 and later mark their Python as 'externally managed' (PEP "
            "668): pip refuses to install anything, even for one user, unless it gets "
            "--break-system-packages. That flag only lifts this refusal; packages in ~/.local "
            "are seen by every program that uses the system python3 under your account, which "
            "is why the distributions ask for explicit consent. There is no apt alternative: "
            "Debian 12 has no python3-onnxruntime package."
        )
    if uses_user_site(facts):
        return (
            f"{size} and installs them into your user site-packages ({facts.user_site}), so no "
            "administrator rights are needed and QGIS's own files are not changed."
        )
    return (
        f"{size} and installs them into the site-packages of the Python that QGIS runs "
        f"({facts.purelib}), which your account can write to."
    )


def install_hint(facts: Facts | None = None) -> str:
    """The sentence for error messages: the button in QGIS, or the exact command to run."""
    facts = facts or current_facts()
    hint = (
        "In QGIS, click 'Install onnxruntime' in the message bar that appears when the plugin "
        f"loads, or run `{manual_command(facts)}` {where_to_run(facts)}; then restart QGIS."
    )
    if not facts.pip_available:
        hint = pip_missing_hint(facts) + " " + hint
    return hint


def restart_needed(facts: Facts, target: str | os.PathLike | None = None) -> bool:
    """Whether the folder pip installs into was missing from ``sys.path`` when QGIS started.

    ``site`` adds the user site-packages at start-up only if it exists, so a first ``--user``
    install lands in a folder the running QGIS never looks at: a restart is needed. When the
    folder was already on ``sys.path``, ``importable_now`` after install usually succeeds.
    """
    if target is not None:
        dest = os.fspath(target)
    elif uses_user_site(facts):
        dest = facts.user_site
    else:
        dest = facts.purelib
    pm = _pathmod(facts.platform)
    norm = pm.normcase(pm.normpath(dest))
    return norm not in {pm.normcase(pm.normpath(p)) for p in facts.sys_path if p}


def is_installed(module: str = "onnxruntime") -> bool:
    """Whether ``module`` can be found, without importing it (cheap enough for ``initGui``)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def importable_now(module: str = "onnxruntime") -> bool:
    """After an install: drop the finders' stale directory caches and try the real import.

    True means the running QGIS can use the package without a restart.
    """
    importlib.invalidate_caches()
    try:
        importlib.import_module(module)
    except Exception:  # a half-visible install can fail in many ways; all mean "restart"
        return False
    return True


def is_externally_managed(stdlib: str, in_venv: bool, exists=os.path.exists) -> bool:
    """PEP 668: an ``EXTERNALLY-MANAGED`` file in the stdlib folder, ignored inside a venv."""
    return not in_venv and bool(stdlib) and exists(os.path.join(stdlib, "EXTERNALLY-MANAGED"))


def current_facts() -> Facts:
    """The facts of the running Python (reads sys, sysconfig, site and the file system)."""
    in_venv = sys.prefix != sys.base_prefix
    purelib = sysconfig.get_path("purelib") or ""
    try:
        user_site = site.getusersitepackages() or ""
    except Exception:  # site can be stubbed by embedding applications
        user_site = ""
    facts = Facts(
        platform=sys.platform,
        executable=sys.executable or "",
        prefix=sys.prefix,
        exec_prefix=sys.exec_prefix,
        version=(sys.version_info.major, sys.version_info.minor),
        externally_managed=is_externally_managed(sysconfig.get_path("stdlib") or "", in_venv),
        in_venv=in_venv,
        prefix_writable=bool(purelib) and os.path.isdir(purelib) and os.access(purelib, os.W_OK),
        pip_available=is_installed("pip"),
        user_site=user_site,
        purelib=purelib,
        sys_path=tuple(sys.path),
    )
    return replace(facts, existing=frozenset(p for p in candidates(facts) if os.path.isfile(p)))
