"""PEP 517 hooks: ``build-backend = "ukl_build.build_meta"``.

Thin: each hook reads settings and calls the engine.  Errors a user can act
on are printed without a traceback (the full one is in build/ukl-build/build.log).
"""

from __future__ import annotations

import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ukl_build.errors import Terminated, UklError
from ukl_build.progress import terminate_as_interrupt

T = TypeVar("T")

__all__ = [
    "build_sdist",
    "build_wheel",
    "get_requires_for_build_sdist",
    "get_requires_for_build_wheel",
    "prepare_metadata_for_build_wheel",
]


def _guard(fn: Callable[[], T]) -> T:
    try:
        with terminate_as_interrupt():  # SIGTERM/SIGHUP clean up as SIGINT does
            return fn()
    except UklError as e:
        print(f"ukl-build error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except Terminated as e:
        print(f"ukl-build: terminated ({signal.Signals(e.signum).name})", file=sys.stderr,
              flush=True)
        raise SystemExit(128 + e.signum) from None


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    from ukl_build.settings import load_settings

    settings = _guard(lambda: load_settings(Path.cwd(), config_settings))
    return ["cmake>=3.20", "ninja"] if settings.cmake is not None else []


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    return []


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    from ukl_build.settings import load_settings
    from ukl_build.wheel import write_metadata_dir

    settings = _guard(lambda: load_settings(Path.cwd(), config_settings))
    return write_metadata_dir(settings, Path(metadata_directory))


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    from ukl_build.pipeline import build, source_date_epoch
    from ukl_build.wheel import write_wheel

    def run() -> str:
        with tempfile.TemporaryDirectory(prefix="ukl-wheel-") as tmp:
            result = build(Path.cwd(), config_settings, out_dir=Path(tmp) / "image")
            return write_wheel(result.settings, result.images, Path(wheel_directory),
                               source_date_epoch())

    return _guard(run)


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    from ukl_build.pipeline import source_date_epoch
    from ukl_build.settings import load_settings
    from ukl_build.wheel import write_sdist

    settings = _guard(lambda: load_settings(Path.cwd(), config_settings))
    return _guard(lambda: write_sdist(settings, Path(sdist_directory), source_date_epoch()))
