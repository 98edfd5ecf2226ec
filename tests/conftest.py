"""Shared fixtures.

Kernel builds are slow (~4 min cold on 2 cores), so every distinct kernel is
built once per session: all tests share one cache (``UKL_BUILD_CACHE``, or a
session temp dir), and the built example apps are session fixtures.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ukl_build.cache import Cache
from ukl_build.pipeline import BuildResult, build, prepare_tree
from ukl_build.progress import Reporter
from ukl_build.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_apps"
TEST_APPS = REPO / "tests" / "apps"


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


class Builds:
    """Session-wide builds of the example apps, one per (app, mode)."""

    def __init__(self, cache: Cache, tmp: pytest.TempPathFactory) -> None:
        self.cache = cache
        self.tmp = tmp
        self.results: dict[tuple[str, ...], BuildResult] = {}

    def __call__(self, name: str, mode: str, **settings: str) -> BuildResult:
        key = (name, mode, *(f"{k}={v}" for k, v in sorted(settings.items())))
        if key not in self.results:
            src = EXAMPLES / name if (EXAMPLES / name).is_dir() else TEST_APPS / name
            dest = self.tmp.mktemp("-".join(key))
            project = dest / name
            shutil.copytree(src, project, ignore=shutil.ignore_patterns("build", "dist"))
            self.results[key] = build(project, {"mode": mode, **settings}, cache=self.cache)
        return self.results[key]


@pytest.fixture(scope="session")
def builds(cache: Cache, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(cache, tmp_path_factory)


@pytest.fixture(scope="session")
def hello_build(builds: Builds) -> BuildResult:
    return builds("hello", "user")


@pytest.fixture(scope="session")
def httpd_build(builds: Builds) -> BuildResult:
    return builds("httpd", "user")


def fake_manifest(**extra: object) -> dict[str, object]:
    """A complete schema-1 manifest.json for an image directory of fake files."""
    return {"schema": 1, "name": "app", "version": "0.1", "module": "app", "mode": "ukl",
            "arch": "x86_64", "ukl_build": "0", "source_date_epoch": 0,
            "kernel": {"release": "6.1.0", "source": {}, "patches": [], "recipes": [],
                       "config": {"file": "app.config", "sha256": "0" * 64}},
            "app": {"libc": "nolibc", "compiler": "gcc", "sha256": "0" * 64, "shortcuts": False},
            "cmdline": "", "args": [], "init_arg_limit": 32, "network": False,
            "images": {"bzimage": {"file": "app.bzImage", "sha256": "0" * 64, "size": 1}},
            "run": {"machine": "microvm", "memory": "256M", "smp": 1, "accel": "tcg",
                    "forward": []},
            **extra}


def valid_cyclonedx(text: str) -> dict[str, Any]:
    """The SBOM, once CycloneDX's own library found it valid against the 1.5 schema."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    assert error is None, f"SBOM invalid: {error}"
    doc: dict[str, Any] = json.loads(text)
    return doc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ukl_build", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def run_image(image_dir: Path, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """``python -m ukl_build run IMAGE_DIR --timeout T ARGS``: status, stdout, stderr."""
    proc = run_cli("run", str(image_dir), "--timeout", str(timeout), *args, timeout=timeout + 60)
    return proc.returncode, proc.stdout, proc.stderr


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, str | None]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read(), resp.getheader("Connection")


def check_httpd(image_dir: Path, *run_args: str, requests: int = 200) -> None:
    """Boot example_apps/httpd, talk HTTP/1.1 to it through a forwarded port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ukl_build", "run", str(image_dir),
         "--forward", f"{port}:8080", "--timeout", "240", *run_args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            if "listening on port 8080" in line:
                break
            assert time.monotonic() < deadline, "httpd did not start"
        else:
            raise AssertionError(f"httpd ended: {proc.stderr.read() if proc.stderr else ''}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        status, body, connection = _get(conn, "/")
        assert status == 200 and body == b"Hello from ukl-build httpd!\n"
        assert connection == "keep-alive"
        for n in (0, 1, 4096, 65536, 300000):  # keep-alive on one connection
            status, body, _ = _get(conn, f"/bytes/{n}")
            assert status == 200 and len(body) == n and set(body) <= {ord("x")}
        status, _, _ = _get(conn, "/nope")
        assert status == 404
        conn.close()

        bad = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        bad.putrequest("GET", "/bytes/12x")
        bad.endheaders()
        assert bad.getresponse().status == 400
        bad.close()

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(requests):
            status, body, _ = _get(conn, "/bytes/64")
            assert status == 200 and len(body) == 64
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # SIGTERM to the launcher must not leave the VM running
    left = subprocess.run(["pgrep", "-f", f"hostfwd=tcp:127.0.0.1:{port}-"], capture_output=True)
    assert left.returncode == 1, "QEMU outlived its launcher"
