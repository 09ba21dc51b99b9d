"""Build hooks: wheels and sdists carry the built editor, so an installed collab serves it from
any directory. The editor is built with npm when ``web/dist`` is missing or older than its
sources; an sdist ships ``web/dist``, so building a wheel from it needs no Node.js. Editable
installs (``make setup``) serve ``web/dist`` of the checkout instead and skip all of this."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

WEB = Path(__file__).resolve().parent / "web"
BUILT = WEB / "dist" / "index.html"
SOURCES = ("src", "index.html", "build.mjs", "package.json", "package-lock.json")


def _stale() -> bool:
    if not BUILT.is_file():
        return True
    built = BUILT.stat().st_mtime
    for name in SOURCES:
        path = WEB / name
        files = path.rglob("*") if path.is_dir() else [path]
        if any(f.is_file() and f.stat().st_mtime > built for f in files):
            return True
    return False


def build_editor() -> None:
    """Make sure ``web/dist`` holds an up-to-date editor; a package without one is refused."""
    npm = shutil.which("npm")
    if not _stale() or (BUILT.is_file() and npm is None):
        return
    if not (WEB / "package.json").is_file():
        raise SystemExit("collab build: no built editor (web/dist) and no editor sources (web/)")
    if npm is None:
        raise SystemExit("collab build: the editor is not built and npm is not installed: install "
                         "Node.js 20 with npm, or run `make web` where it is, then build again")
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)
    subprocess.run([npm, "run", "build"], cwd=WEB, check=True)


class BuildWithEditor(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        build_editor()
        target = Path(self.build_lib) / "collab" / "web"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(BUILT.parent, target)


class SdistWithEditor(sdist):
    def run(self) -> None:
        build_editor()
        super().run()


setup(cmdclass={"build_py": BuildWithEditor, "sdist": SdistWithEditor})
