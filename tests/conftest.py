"""Shared fixtures.

Kernel builds are slow (~4 min cold on 2 cores), so every distinct kernel is
built once per session: all tests share one cache (``UKL_BUILD_CACHE``, or a
session temp dir), and the built example apps are session fixtures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ukl_build.cache import Cache
from ukl_build.pipeline import BuildResult, build, prepare_tree
from ukl_build.progress import Reporter
from ukl_build.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_apps"


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cache]:
    root = os.environ.get("UKL_BUILD_CACHE")
    path = Path(root) if root else tmp_path_factory.mktemp("ukl-cache")
    old = os.environ.get("UKL_BUILD_CACHE")
    os.environ["UKL_BUILD_CACHE"] = str(path)  # for subprocesses (pip, the CLI)
    yield Cache(path)
    if old is None:
        os.environ.pop("UKL_BUILD_CACHE", None)


def copy_example(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(EXAMPLES / name, target, ignore=shutil.ignore_patterns("build", "dist"))
    return target


@pytest.fixture(scope="session")
def patched_tree(cache: Cache, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    project = copy_example("hello", tmp_path_factory.mktemp("tree"))
    with Reporter(None) as r:
        return prepare_tree(load_settings(project), cache, r)


@pytest.fixture(scope="session")
def hello_build(cache: Cache, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    project = copy_example("hello", tmp_path_factory.mktemp("hello"))
    return build(project, cache=cache)


@pytest.fixture(scope="session")
def httpd_build(cache: Cache, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    project = copy_example("httpd", tmp_path_factory.mktemp("httpd"))
    return build(project, cache=cache)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ukl_build", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
