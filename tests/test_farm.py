"""Build farms end to end: a shared ccache in a real redis-server, and distcc through a
real distccd, both on 127.0.0.1 (Debian's packages)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ukl_build.cache import Cache
from ukl_build.pipeline import build

from conftest import copy_example, free_port, run_cli

pytestmark = pytest.mark.kernel


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server ended with status {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def redis_store(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_fresh_runner_takes_kernel_objects_from_the_remote_store(redis_store: str,
                                                                 tmp_path: Path) -> None:
    settings = {"mode": "user", "ccache.remote-storage": redis_store}
    first = build(copy_example("hello", tmp_path / "runner1"), settings,
                  cache=Cache(tmp_path / "cache1"))
    assert first.kernel_built
    # A new CI runner: another directory, an empty cache (no local ccache), the same store.
    second = build(copy_example("hello", tmp_path / "runner2"), settings,
                   cache=Cache(tmp_path / "cache2"))
    line = next(ln for ln in second.log.read_text().splitlines() if "compiler cache:" in ln)
    counts = {k: int(v) for v, k in
              (w.split(" ", 1) for w in line.split("compiles: ")[1].split(", "))}
    compiles = int(line.split("compiler cache: ")[1].split(" ")[0])
    # Nearly all from the store; a few local hits are compiles repeated within this build,
    # served from what the first remote hit put into the (new) local cache.
    assert counts["remote hits"] >= 0.9 * compiles, line
    assert counts["misses"] <= 0.02 * compiles, line
    assert (second.images.image("bzimage").read_bytes()
            == first.images.image("bzimage").read_bytes())


@pytest.fixture
def distccd() -> Iterator[tuple[str, Path]]:
    """distccd on 127.0.0.1; run by root it becomes user distccd, so its log lives in a
    directory that user can write (ours, removed afterwards)."""
    port = free_port()
    logdir = Path(tempfile.mkdtemp(prefix="ukl-distccd-"))
    logdir.chmod(0o777)
    log = logdir / "distccd.log"
    proc = subprocess.Popen(["distccd", "--no-detach", "--daemon", "--allow", "127.0.0.1",
                             "--listen", "127.0.0.1", "--port", str(port), "--jobs", "2",
                             "--log-file", str(log), "--log-level", "info",
                             "--enable-tcp-insecure"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_port(port, proc)
        yield f"127.0.0.1:{port}/2", log
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the daemon and the workers it forked
        proc.wait()
        shutil.rmtree(logdir, ignore_errors=True)


def test_kernel_compiles_go_through_distcc(distccd: tuple[str, Path], tmp_path: Path) -> None:
    """A build in an empty cache: every compile misses ccache and goes to distccd."""
    hosts, log = distccd
    project = copy_example("hello", tmp_path)
    result = build(project, {"mode": "user", "distcc.hosts": hosts},
                   cache=Cache(tmp_path / "cache"))
    assert result.kernel_built
    ran = log.read_text().count("COMPILE_OK")
    line = next(ln for ln in result.log.read_text().splitlines() if "compiler cache:" in ln)
    assert ran > 500, (ran, line)  # nearly every kernel compile ran on the distcc server
    assert "compiled through distcc" in line
    proc = run_cli("run", str(result.images.directory), "--timeout", "120", timeout=180)
    assert proc.returncode == 3, proc.stderr
