"""Never ship the wrong image, never leave a process behind (QEMU TCG, real builds).

Builds of different apps on one kernel configuration at the same time, a
build killed at a random point, `run` killed with SIGKILL, app arguments
that the kernel command line must carry exactly.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from conftest import Builds, copy_example, free_port, run_cli

pytestmark = pytest.mark.kernel
# New app bytes in every session, so a warm cache cannot stand in for the links under test.
SALT = os.urandom(4).hex()


def hello_variant(tmp: Path, tag: str, mode: str) -> Path:
    """example_apps/hello printing "Hello-<tag>", built in ``mode``."""
    project = copy_example("hello", tmp / f"{tag}-{mode}")
    set_tag(project, tag)
    # hello's configuration is the servers': its user-mode variants boot their kernel
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('mode = "ukl"', f'mode = "{mode}"'))
    return project


def set_tag(project: Path, tag: str) -> None:
    src = project / "src/hello.c"
    lines = [ln for ln in src.read_text().splitlines() if not ln.startswith("#define TAG")]
    text = "\n".join(lines).replace('"Hello, %s', '"Hello-" TAG ", %s')
    src.write_text(f'#define TAG "{tag}"\n{text}\n')


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ukl_build", *args]


def build_all_at_once(projects: Iterable[Path]) -> None:
    procs = {p: subprocess.Popen(cli("build", str(p)), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for p in projects}
    for p, proc in procs.items():
        _out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{p}: {err[-2000:]}"


def boots_own_app(project: Path, tag: str) -> None:
    proc = run_cli("run", str(project / "build/ukl-build/image"), "--timeout", "120", timeout=180)
    assert f"Hello-{tag}, world" in proc.stdout, (tag, proc.stdout, proc.stderr)
    assert proc.returncode == 3, proc.stderr


def rounds_at_once(projects: dict[str, Path], rounds: int) -> dict[str, str]:
    """Change every app, build them all at once, boot each; return the last tags."""
    tags: dict[str, str] = {}
    for round_ in range(rounds):
        tags = {t: f"{t}r{round_}-{SALT}" for t in projects}
        for t, p in projects.items():
            set_tag(p, tags[t])
        build_all_at_once(projects.values())
        for t, p in projects.items():
            boots_own_app(p, tags[t])
    return tags


def test_four_apps_built_at_once_twice_each_boot_their_own(builds: Builds,
                                                          tmp_path: Path) -> None:
    """Two apps per mode, each mode one kernel configuration, built at once, twice; then
    the UKL pair once more from nothing in their projects: what the cache holds under
    each app's key is that app, and the rebuilds reuse it.  (Until 2026-12-06 the UKL
    pair had a test of its own, three rounds of two builds at once: this test's first
    round did all of that test's work but its reuse check.)"""
    builds("hello", "ukl")  # the shared kernel configurations, built once per session
    builds("probe", "user")  # the kernel configuration of the user-mode variants
    projects = {f"{m}{i}": hello_variant(tmp_path, f"{m}{i}", m)
                for m in ("ukl", "user") for i in (1, 2)}
    tags = rounds_at_once(projects, 2)
    ukl = {t: p for t, p in projects.items() if t.startswith("ukl")}
    for p in ukl.values():
        shutil.rmtree(p / "build")
    build_all_at_once(ukl.values())
    for t, p in ukl.items():
        assert "reusing cached images" in (p / "build/ukl-build/build.log").read_text()
        boots_own_app(p, tags[t])


def test_two_builds_of_one_project_take_turns(builds: Builds, tmp_path: Path) -> None:
    builds("hello", "ukl")
    project = hello_variant(tmp_path, "same", "ukl")
    procs = [subprocess.Popen(cli("build", str(project)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("waiting for another build of" in e for e in errs) == 1
    boots_own_app(project, "same")


# Set in the environment of one doomed build, and so inherited by every process it starts:
# what is left of that build, and not the builds other tests run at the same time.
DOOMED = "UKL_TEST_DOOMED_BUILD"


def _ours_running(tag: str) -> list[str]:
    """Processes still running that the build started with ``DOOMED=tag`` made."""
    marker = f"{DOOMED}={tag}".encode()
    left = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker in environ:
            left.append(cmd[:200])
    return left


def _wait_none_left(tag: str, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while (left := _ours_running(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"outlived the killed build: {left}"


def test_build_killed_at_random_points_then_a_changed_app_boots(
        builds: Builds, tmp_path: Path) -> None:
    builds("hello", "ukl")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    project = hello_variant(tmp_path, "k", "ukl")
    for attempt in range(3):
        set_tag(project, f"doomed{attempt}")
        tag = f"{SALT}-{attempt}"
        proc = subprocess.Popen(cli("build", str(project)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, DOOMED: tag})
        # a relink takes ~5-15 s here; kill anywhere from app compile to image copy
        delay = rng.uniform(0.5, 10.0)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        _wait_none_left(tag)
        set_tag(project, f"alive{attempt}")
        done = run_cli("build", str(project), timeout=900)
        assert done.returncode == 0, f"seed {seed}, killed after {delay:.1f} s: {done.stderr}"
        boots_own_app(project, f"alive{attempt}")


def _qemu_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "qemu-system"], capture_output=True,
                         text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_run_leaves_no_qemu(httpd_build) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    proc = subprocess.Popen(cli("run", str(httpd_build.images.directory), "--forward",
                                f"{port}:8080", "--timeout", "300"),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on port 8080" in line:
            break
    qemu = _qemu_children(proc.pid)
    assert len(qemu) == 1, qemu
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(qemu[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(qemu[0]), f"QEMU {qemu[0]} outlived its launcher"


ARGS = ["two words", "", 'quo""te', "tab\there", "a=b", "=lead", "é à", "-x", "trailing ",
        "  lead", "x=", "last\"odd"]


def _printed_args(stdout: str) -> list[str]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith(("argc=", "arg"))]
    argc = int(lines[0].removeprefix("argc="))
    args = [bytes.fromhex(ln.split("=", 1)[1].rstrip(".")).decode() for ln in lines[1:]]
    assert len(args) == argc - 1, stdout
    return args


@pytest.mark.parametrize("mode", ["ukl", "user"])
def test_argv_arrives_exactly(builds: Builds, mode: str) -> None:
    result = builds("argv", mode)
    image = str(result.images.directory)
    built_in = run_cli("run", image, "--timeout", "120", timeout=180)
    assert _printed_args(built_in.stdout) == ["two words", "", "a=b"], built_in.stderr
    given = run_cli("run", image, "--timeout", "120", "--", *ARGS, timeout=180)
    assert given.returncode == 0, given.stderr
    assert _printed_args(given.stdout) == ARGS
    # Words of the command line that the kernel proper does not register ("nokaslr" is
    # the decompressor's) are not the app's arguments (kernel patch 0017): Redis took
    # "nokaslr" for its configuration file.
    extra = run_cli("run", image, "--timeout", "120", "--cmdline", "nokaslr ukl_stray_word",
                    "--kernel-log", timeout=180)
    assert _printed_args(extra.stdout) == ["two words", "", "a=b"], extra.stdout + extra.stderr
    assert 'parameter "ukl_stray_word", not passed to init' in extra.stdout + extra.stderr
    refused = run_cli("run", image, "--timeout", "120", "--", "ok", 'x="y z"', timeout=180)
    assert refused.returncode == 1
    assert "argument 2 'x=\"y z\"' cannot be passed on a kernel command line" in refused.stderr

