"""Where ukl-build's data lives: recipes/, kernel_patches/, libc_patches/ and runtime/.

In an installed wheel they are packages inside ``ukl_build``; in a source
checkout (or an editable install) they are top-level directories.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    for candidate in (_HERE / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"ukl-build data directory {name!r} is missing from the installation")


def recipes_dir() -> Path:
    return _find("recipes")


def patches_dir() -> Path:
    return _find("kernel_patches")


def libc_patches_dir() -> Path:
    return _find("libc_patches")


def runtime_dir() -> Path:
    return _HERE / "runtime"
