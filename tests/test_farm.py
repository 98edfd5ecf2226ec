"""Build farms end to end, as a team runs them: a shared ccache in a real redis-server
and a real distccd, both on 127.0.0.1 (Debian's packages).

One cold build compiles through distccd and fills the store (CI runner 1); `verify
--against` builds the same from nothing with the local compiler and finds every
image file identical; a fresh runner (another directory, an empty cache, `PATH`
holding only the declared packages' commands: the install closure) takes its kernel
objects from the store and boots; httpd relinks on its kernel and serves; a third
build shares that runner's cache with `clean --max-size 0` running under it.

The subjects here are compilers, caches and host tools, not the kernel's
configuration: every build is one small kernel (user mode, without the hardened
recipe, on microvm with the network alone, not hello's server and storage
recipes), and the only cold builds in empty caches of the whole suite are the first
runner's and verify's.  That kernel is Linux 6.12: the farm needs a cold build of
*some* kernel, and on 6.12 it is the suite's one user-mode kernel of the second
series (hello and httpd as /init on the series with CONFIG_UKL off: what
tests/test_linux612.py would otherwise build a kernel of its own for), and the fresh
runner proves the install closure for that series' source package too.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ukl_build.cache import EVICTABLE, Cache
from ukl_build.pipeline import BuildResult, build

from closure import declared_commands_dir
from conftest import check_httpd, copy_example, free_port, run_cli

# The farm's kernel: small, with the network (for httpd), on the second series.
PLAIN = {"mode": "user", "hardened": "false", "recipes": "net;virtio-net;microvm",
         "kernel.version": "6.12"}

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


@dataclass(frozen=True)
class Farm:
    store: str  # ccache remote storage URL
    hosts: str  # DISTCC_HOSTS
    distccd_log: Path


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """redis-server and distccd on 127.0.0.1, killed (with distccd's workers) at the end.

    Run by root, distccd becomes user distccd: its log lives in a directory that user
    can write (ours, removed afterwards)."""
    redis_port, distcc_port = free_port(), free_port()
    logdir = Path(tempfile.mkdtemp(prefix="ukl-distccd-"))
    logdir.chmod(0o777)
    log = logdir / "distccd.log"
    redis = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                              "--save", "", "--appendonly", "no",
                              "--dir", str(tmp_path_factory.mktemp("redis"))],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    distccd = subprocess.Popen(["distccd", "--no-detach", "--daemon", "--allow", "127.0.0.1",
                                "--listen", "127.0.0.1", "--port", str(distcc_port),
                                "--jobs", "2", "--log-file", str(log), "--log-level", "info",
                                "--enable-tcp-insecure"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        _wait_port(redis_port, redis)
        _wait_port(distcc_port, distccd)
        yield Farm(f"redis://127.0.0.1:{redis_port}", f"127.0.0.1:{distcc_port}/2", log)
    finally:
        redis.kill()
        redis.wait()
        os.killpg(distccd.pid, signal.SIGKILL)  # the daemon and the workers it forked
        distccd.wait()
        shutil.rmtree(logdir, ignore_errors=True)


def cache_line(log: Path) -> dict[str, int]:
    """The build's "compiler cache:" line (from its build.log) as numbers."""
    line = next(ln for ln in log.read_text().splitlines() if "compiler cache:" in ln)
    numbers = {"compiles": r"(\d+) compiles", "local": r"(\d+) local hits",
               "remote": r"(\d+) remote hits", "misses": r"(\d+) misses",
               "distcc": r"distcc sent (\d+) jobs"}
    return {k: int(m.group(1)) for k, rx in numbers.items() if (m := re.search(rx, line))}


@pytest.fixture(scope="module")
def first_runner(farm: Farm, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    """A cold build in an empty cache: every compile misses, runs on distccd, and its
    object goes into the store."""
    tmp = tmp_path_factory.mktemp("runner1")
    result = build(copy_example("hello", tmp), {**PLAIN, "ccache.remote-storage": farm.store,
                                                "distcc.hosts": farm.hosts},
                   cache=Cache(tmp / "cache"))
    assert result.kernel_built
    return result


@dataclass(frozen=True)
class Runner:
    """A build run as the CLI: its project, cache and captured output."""

    project: Path
    cache: Cache
    proc: subprocess.CompletedProcess[str]
    env: dict[str, str]

    @property
    def log(self) -> Path:
        return self.project / "build/ukl-build/build.log"

    @property
    def image_dir(self) -> Path:
        return self.project / "build/ukl-build/image"


@pytest.fixture(scope="module")
def fresh_runner(farm: Farm, first_runner: BuildResult,
                 tmp_path_factory: pytest.TempPathFactory) -> Runner:
    """A new CI runner: another directory, an empty cache (no local ccache), the store,
    and a PATH holding only the commands of the declared packages (the install closure:
    source extraction, patching, kconfig, sysroot, kernel build and boot all run)."""
    tmp = tmp_path_factory.mktemp("runner2")
    cache = Cache(tmp / "cache")
    project = copy_example("hello", tmp)
    env = {"PATH": str(declared_commands_dir(tmp / "bin")), "HOME": str(tmp),
           "UKL_BUILD_CACHE": str(cache.root), "LANG": "C.UTF-8"}
    settings = [f"-C{k}={v}" for k, v in {**PLAIN, "ccache.remote-storage": farm.store}.items()]
    proc = run_cli("build", str(project), *settings, env=env, timeout=1500)
    return Runner(project, cache, proc, env)


def test_a_cold_build_compiles_through_distccd(farm: Farm, first_runner: BuildResult) -> None:
    counts = cache_line(first_runner.log)
    ran = farm.distccd_log.read_text().count("COMPILE_OK")
    # Most kernel compiles ran on the distcc server, and the client counted each one.  Not
    # all: distcc runs some here (assembler through `-x`), and a few compiles repeat
    # within the build and hit the (new) local cache.  Measured: 655 of 759 misses (6.12).
    assert counts["distcc"] == ran and ran >= 0.75 * counts["misses"], (ran, counts)
    assert counts["remote"] == 0 and counts["misses"] >= 0.9 * counts["compiles"], counts
    assert first_runner.images.manifest["kernel"]["series"] == "linux-6.12"
    proc = run_cli("run", str(first_runner.images.directory), "--timeout", "120", timeout=180)
    assert "Hello, world, from a unikernel! (CPL 3)" in proc.stdout, proc.stderr
    assert proc.returncode == 3, proc.stderr


def test_verify_against_the_farms_image_from_an_empty_cache(
        first_runner: BuildResult, tmp_path: Path) -> None:
    """`verify --against`: one build from nothing, every file compiled here without a
    compiler cache, gives the farm's image directory byte for byte (the first runner's
    objects came from distccd through ccache).  This is the suite's reproducibility
    test: another directory, another cache, another time, another compiler path."""
    project = copy_example("hello", tmp_path)
    proc = run_cli("verify", str(project), *[f"-C{k}={v}" for k, v in PLAIN.items()],
                   "--against", str(first_runner.images.directory), "--keep", str(tmp_path / "v"),
                   timeout=2400)  # a cold kernel build beside the other worker
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert f"verify: reproducible: 4 outputs identical to {first_runner.images.directory}" \
        in proc.stdout, proc.stdout
    for label in ("image ukl_hello.bzImage", "image manifest.json", "image sbom.cdx.json",
                  "image ukl_hello.config"):
        assert label in proc.stdout
    log = (tmp_path / "v/a/src/hello/build/ukl-build/build.log").read_text()
    assert ", no compiler cache)" in log, log[-2000:]
    assert not (tmp_path / "v/a/cache/ccache").exists()


def test_fresh_runner_takes_kernel_objects_from_the_remote_store(
        first_runner: BuildResult, fresh_runner: Runner) -> None:
    proc = fresh_runner.proc
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cold build" in proc.stderr
    counts = cache_line(fresh_runner.log)
    # Nearly all from the store; a few local hits are compiles repeated within this build,
    # served from what the first remote hit put into the (new) local cache.
    assert counts["remote"] >= 0.9 * counts["compiles"], counts
    assert counts["misses"] <= 0.02 * counts["compiles"], counts
    image = fresh_runner.image_dir / "ukl_hello.bzImage"
    assert image.read_bytes() == first_runner.images.image("bzimage").read_bytes()
    # And it boots, still with only the declared commands (QEMU, the firmware).
    run = run_cli("run", str(fresh_runner.image_dir), "--timeout", "120", env=fresh_runner.env,
                  timeout=300)
    assert "Hello, world, from a unikernel! (CPL 3)" in run.stdout, run.stderr[-3000:]
    assert run.returncode == 3


def test_httpd_relinks_on_the_runners_kernel_and_serves(
        farm: Farm, fresh_runner: Runner, tmp_path: Path) -> None:
    """httpd with the farm's settings: the fresh runner's kernel objects (the same
    configuration: the command line is not part of it), only the app and the link are
    new; httpd serves as /init on 6.12."""
    result = build(copy_example("httpd", tmp_path),
                   {**PLAIN, "ccache.remote-storage": farm.store}, cache=fresh_runner.cache)
    log = result.log.read_text()
    assert "incremental build of Linux 6.12." in log and "cold build" not in log, log[-2000:]
    kernel = result.images.manifest["kernel"]
    assert kernel["series"] == "linux-6.12" and kernel["release"].startswith("6.12.")
    config = (result.images.directory / kernel["config"]["file"]).read_text()
    assert "# CONFIG_UKL is not set" in config or "CONFIG_UKL" not in config
    check_httpd(result.images.directory, requests=400)


def test_damaged_cache_entries_are_found_and_made_again(
        farm: Farm, first_runner: BuildResult, fresh_runner: Runner, tmp_path: Path) -> None:
    """The fresh runner's cache, damaged as real machines damage caches: a cached image
    with 64 bytes zeroed, a byte of the C library's headers changed, and a line added
    to a file of the cached tree (ukl.c, which our series adds; an edit of an unpatched
    file goes through the tree's hard link into the extracted source too, which
    apply_patches checks the same way before it makes the tree again).  The next build
    says what it found, discards and remakes each entry, compiles from the pristine
    tree (a fresh kernel build dir: the old objects may come from the edited file), and
    ships the first runner's image, which boots."""
    cache = fresh_runner.cache
    images = next(p for p in (cache.root / "images").iterdir() if (p / "bzImage").is_file())
    data = bytearray((images / "bzImage").read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    (images / "bzImage").write_bytes(bytes(data))
    tree = next((cache.root / "trees").iterdir())
    with open(tree / "tree/arch/x86/kernel/ukl.c", "a") as f:  # root ignores read-only
        f.write('/* a stray edit */ const char *ukl_test_stray = "edited";\n')
    # A byte of the nolibc sysroot changed, size and mtime kept (only hashing finds it),
    # and a comment added to the app, so that a compile reads the sysroot again (a build
    # that compiles nothing does not hash the C library).
    sysroot = next((cache.root / "sysroots").iterdir())
    arch_h = sysroot / "include/arch.h"
    st = arch_h.stat()
    text = bytearray(arch_h.read_bytes())
    text[0] = ord(" ") if text[0] != ord(" ") else ord("\t")
    arch_h.write_bytes(bytes(text))
    os.utime(arch_h, ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(fresh_runner.project / "src/hello.c", "a") as f:
        f.write("/* a comment: the same program */\n")
    proc = run_cli("build", str(fresh_runner.project), *[f"-C{k}={v}" for k, v in PLAIN.items()],
                   f"-Cccache.remote-storage={farm.store}",
                   env={**os.environ, "UKL_BUILD_CACHE": str(cache.root)}, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (f"cache: trees/{tree.name[:16]}: tree/arch/x86/kernel/ukl.c changed size"
            in proc.stderr), proc.stderr
    assert f"cache: images/{images.name[:16]}: bzImage changed content" in proc.stderr
    assert f"cache: sysroots/{sysroot.name[:16]}: include/arch.h changed content" in proc.stderr
    assert "built from another copy of the tree; starting it afresh" in proc.stderr
    assert b"ukl_test_stray" not in (tree / "tree/arch/x86/kernel/ukl.c").read_bytes()
    image = fresh_runner.image_dir / "ukl_hello.bzImage"
    assert image.read_bytes() == first_runner.images.image("bzimage").read_bytes()
    run = run_cli("run", str(fresh_runner.image_dir), "--timeout", "120", timeout=300)
    assert run.returncode == 3, run.stderr[-2000:]


class _CleanAtStage(io.StringIO):
    """The build's progress stream: when the build reaches ``stage`` (it holds its tree
    and config, not yet its kernel build dir), one `clean --max-size 0` runs."""

    def __init__(self, stage: str, env: dict[str, str]) -> None:
        super().__init__()
        self.stage, self.env = stage, env
        self.clean: subprocess.CompletedProcess[str] | None = None

    def write(self, text: str) -> int:
        if self.clean is None and f"[ukl-build] {self.stage}:" in text:
            self.clean = run_cli("clean", "--max-size", "0", env=self.env, timeout=300)
        return super().write(text)


def test_clean_max_size_during_a_build_never_breaks_it(
        farm: Farm, first_runner: BuildResult, fresh_runner: Runner, tmp_path: Path) -> None:
    """`clean --max-size 0` while a build uses the same cache, once at a fixed point and
    again and again in a loop: the entries the build holds stay, the rest go (even the
    kernel build dir it is about to take: it makes it again), and it ships the right
    image."""
    cache = fresh_runner.cache
    stale = cache.root / "kbuild" / "stale-entry-of-an-old-build"
    stale.mkdir(parents=True)
    (stale / "vmlinux.o").write_bytes(b"\0" * (1 << 20))
    os.utime(stale, (1, 1))
    env = {**os.environ, "UKL_BUILD_CACHE": str(cache.root)}
    stop = threading.Event()
    cleans: list[subprocess.CompletedProcess[str]] = []

    def clean_loop() -> None:
        while not stop.wait(0.5):
            cleans.append(run_cli("clean", "--max-size", "0", env=env, timeout=300))

    hook = _CleanAtStage("app", env)
    cleaner = threading.Thread(target=clean_loop)
    cleaner.start()
    try:
        third = build(copy_example("hello", tmp_path),
                      {**PLAIN, "ccache.remote-storage": farm.store, "cache.max-size": "1M"},
                      cache=cache, stream=hook)
    finally:
        stop.set()
        cleaner.join()
    assert hook.clean is not None
    cleans.append(hook.clean)
    assert all(c.returncode == 0 for c in cleans), [c.stderr for c in cleans]
    removed = "".join(c.stdout for c in cleans)
    # At the app stage the build held its source and tree: the clean passed over them.
    assert "removed trees/" not in hook.clean.stdout and "removed sources/" not in hook.clean.stdout
    # The kernel build dir it went on to use was removed under it, and it made it again.
    assert f"removed kbuild/{third.kernel.build_dir.name}" in removed, removed
    assert "compiler cache:" in third.log.read_text()
    assert "removed kbuild/stale-entry-of-an-old-build" in removed and not stale.exists()
    assert (third.images.image("bzimage").read_bytes()
            == first_runner.images.image("bzimage").read_bytes())
    assert "[ukl-build] cache: cache.max-size: trimmed to 1.0 MiB" in third.log.read_text()
    # The build is over: nothing holds its entries any more, and a clean takes them all.
    proc = run_cli("clean", "--max-size", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    left = [p for kind in EVICTABLE if (cache.root / kind).is_dir()
            for p in (cache.root / kind).iterdir()]
    assert left == [], left
    assert (third.images.directory / "manifest.json").is_file()  # outputs are not the cache's
