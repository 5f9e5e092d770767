"""Which software this is: the laserhost package version and, from a git checkout, the commit.

laserd journals it with every session (event `session_context`) and `laserctl report` prints both
the software that ran the session and the software that wrote the report.
"""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "laserhost"
SOURCE_ROOT = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_S = 2.0


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def software_version() -> dict[str, Any]:
    """{"package", "version", "git_commit", "git_dirty"}; the git fields are None outside a checkout
    (an installed wheel), never guessed."""
    try:
        version: str | None = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = None
    commit = dirty = None
    if (SOURCE_ROOT / ".git").exists():
        commit = _git("rev-parse", "HEAD")
        if commit is not None:
            status = _git("status", "--porcelain", "--untracked-files=no")
            dirty = None if status is None else bool(status)
    return {"package": PACKAGE, "version": version, "git_commit": commit, "git_dirty": dirty}


def describe(info: dict[str, Any] | None) -> str:
    """One line: 'laserhost 0.1.0 (git 0338556, with local changes)'."""
    if not info:
        return "not recorded"
    text = f"{info.get('package') or PACKAGE} {info.get('version') or '(version unknown)'}"
    commit = info.get("git_commit")
    if commit:
        text += f" (git {commit[:12]}{', with uncommitted changes' if info.get('git_dirty') else ''})"
    else:
        text += " (no git commit recorded)"
    return text
