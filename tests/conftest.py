"""Shared fixtures, and how the suite is spread over pytest-xdist's workers.

Kernel builds are slow (~4 min cold on 2 cores), so every distinct kernel is
built once per session: all tests share one cache (``UKL_BUILD_CACHE``, or a
session temp dir shared by the workers), and the built example apps are
session fixtures.  Two workers building or needing the same kernel at once
take turns on the cache's locks: the second finds the first one's images.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ukl_build.cache import Cache
from ukl_build.pipeline import BuildResult, build, prepare_tree
from ukl_build.progress import Reporter
from ukl_build.pytest_plugin import UklVm
from ukl_build.settings import load_settings

import kernel_times

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_apps"
TEST_APPS = REPO / "tests" / "apps"
# What every example's pyproject.toml names (hello's included): one kernel per mode.  A
# project a test writes names them too, or it would be a kernel configuration of its own.
EXAMPLE_RECIPES = 'recipes = ["server", "net", "virtio-net", "storage", "microvm"]'


# make test runs the suite on two workers (-n 2 --dist loadgroup --no-loadscope-reorder):
# QEMU under TCG is single-threaded, so boots and server tests run beside each other and
# beside kernel builds.  The tests of each module named here stay on one worker (per
# value of the module-scoped fixture named with it, e.g. the Redis served in each mode):
# their fixtures (a VM serving the module's tests, signing keys, a build farm) would be
# set up again on another.  A test can join a group with @pytest.mark.xdist_group(name).
MODULE_GROUPS = {"test_redis.py": ("redis", "redis_port"),
                 "test_memcached.py": ("memcached", "memcached_port"),
                 "test_nginx.py": ("nginx", "nginx"),
                 "test_uefi.py": ("uefi", None), "test_farm.py": ("farm", None),
                 "test_linux612.py": ("linux-6.12", None)}
# Handed out first, in this order (the rest follow in file order): the long tests and
# groups, so that the run does not end with one of them alone on a worker while the
# other idles.  The first worker gets the harness test, which builds the servers'
# kernels (both modes: every example's configuration); the second the farm: the only
# cold builds in caches of their own (its first runner and verify).  Then the UEFI
# kernel, the one cold build left, beside the server groups (boots and app compiles on
# kernels built by then).
# Durations measured on a clean clone: docs/testing.md.
FIRST = (
    "test_benchmarks.py::test_harness_quick",
    "test_farm.py",
    "test_linux612.py",
    "test_uefi.py",
    "test_redis.py",
    "test_memcached.py",
    "test_nginx.py",
    "test_robustness.py",
    "test_plugin.py",
)


def _priority(item: pytest.Item) -> int:
    name = item.nodeid.removeprefix("tests/")
    return next((i for i, prefix in enumerate(FIRST) if name.startswith(prefix)), len(FIRST))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shortcut-servers", action="store_true",
                     help="also run the Redis and memcached tests on UKL builds with "
                          "shortcuts = true (both servers and libevent compiled once more, "
                          "about 3 minutes: not in CI's run; docs/testing.md)")


# The servers' module fixtures run on each (test_redis.py, test_memcached.py).
SERVER_VARIANTS = ["ukl", "user", "ukl-shortcuts"]


def server_variant(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """A server fixture's parameter as (mode, settings); "ukl-shortcuts" is skipped
    unless --shortcut-servers is given (the probe checks every shortcut in CI)."""
    if request.param == "ukl-shortcuts":
        if not request.config.getoption("--shortcut-servers"):
            pytest.skip("UKL with shortcuts: run with --shortcut-servers")
        return "ukl", {"shortcuts": "true"}
    return str(request.param), {}


def pytest_itemcollected(item: pytest.Item) -> None:
    """The group marks, as each test is collected: xdist reads them in its own
    pytest_collection_modifyitems, which runs before a trylast one."""
    if item.path.name not in MODULE_GROUPS or item.get_closest_marker("xdist_group"):
        return
    group, fixture = MODULE_GROUPS[item.path.name]
    params = getattr(item, "callspec", None)
    if fixture is not None and params is not None and fixture in params.params:
        group += f"-{params.params[fixture]}"
    item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture parameters
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_priority)  # stable: each module keeps its own order


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under --dist loadgroup, refuse to run if xdist did not take the groups (it names
    a group in the test's node ID): each worker would set up the module-wide fixtures
    again, the build farm's cold build included."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not session.config.getvalue("loadgroup"):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist did not group {len(lost)} tests (e.g. {lost[0]}): this pytest "
            f"({pytest.__version__}) and pytest-xdist do not work together; see the test "
            "extras in pyproject.toml")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The session's kernel makes, longest first (tests/kernel_times.py)."""
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is None or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    makes = kernel_times.kernel_makes(factory.getbasetemp())
    if makes:
        terminalreporter.section("kernel builds (from the session's build logs)")
        for line in kernel_times.table(makes):
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cache]:
    root = os.environ.get("UKL_BUILD_CACHE")
    if root:
        path = Path(root)
    else:  # one cache for all workers: under xdist each has its own basetemp below a shared one
        base = tmp_path_factory.getbasetemp()
        path = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "ukl-cache"
        path.mkdir(exist_ok=True)
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
    """example_apps/hello as it is (UKL mode, the demo): the packaging tests' app, on the
    kernel every example shares (the servers' UKL configuration)."""
    return builds("hello", "ukl")


@pytest.fixture(scope="session")
def httpd_build(builds: Builds) -> BuildResult:
    return builds("httpd", "user")


@pytest.fixture(scope="session")
def ukl_build_links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --find-links directory holding a wheel of this repository's ukl-build, as an
    isolated build environment would get it from an index (made once per session)."""
    links = tmp_path_factory.mktemp("links")
    made = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(links),
                           str(REPO)], capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    # setuptools builds it without a deprecation or a "package would be ignored"
    assert "BuildBackendWarning" not in made.stdout + made.stderr, made.stdout + made.stderr
    return links


def fake_manifest(**extra: object) -> dict[str, object]:
    """A complete schema-1 manifest.json for an image directory of fake files."""
    return {"schema": 1, "name": "app", "version": "0.1", "module": "app", "mode": "ukl",
            "arch": "x86_64", "ukl_build": "0", "source_date_epoch": 0,
            "kernel": {"release": "6.1.0", "source": {}, "series": "linux-6.1", "patches": [],
                       "recipes": [],
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


def probe_lines(out: str) -> list[str]:
    """The probe's check lines ("name: ok" / "name: FAIL", "atexit handler: ran"), not the
    kernel's own messages, which a boot on a loaded host may add (e.g. "..MP-BIOS bug:
    8254 timer not connected to IO-APIC" when the emulated PIT ticked too late)."""
    return [ln for ln in out.splitlines() if ln.endswith((": ok", ": FAIL", ": ran"))
            and not ln.startswith("probe: ")]


# The kernel's quick TSC calibration against the PIT fails when the emulator is
# descheduled during it (a loaded host); the TSC then becomes the clocksource only
# after the full calibration, about a second later, and until then time is counted
# in 4 ms ticks and the boot wall clock comes from the CMOS clock (docs/design.md).
# What a boot without the TSC's frequency printed on a loaded host.  ("Fast TSC
# calibration failed" alone is harmless now: with tsc_early_khz= the kernel still
# tries the PIT for the CPU's own frequency, then takes the TSC's.)
TSC_CALIBRATION_FAILED = ("Unable to calibrate against PIT", "Marking TSC unstable",
                          "Switched to clocksource refined-jiffies")


# The local APIC timer is checked the same way at boot (100 of its ticks against the
# jiffies of the PIT); a descheduled vCPU fails that check too, and the kernel then runs
# without high-resolution timers: sleeps end on a 4 ms tick.  TCG has no TSC-deadline
# timer ("TCG doesn't support requested feature"), so there is no way around the check.
LAPIC_TIMER_FAILED = "APIC timer disabled due to verification failure"


def tsc_calibration_failed(text: str) -> bool:
    return any(m in text for m in TSC_CALIBRATION_FAILED)


def skip_if_clocks_uncalibrated(out: str) -> None:
    """The probe's threads run (with --kernel-log): if the kernel could not calibrate the
    TSC or the APIC timer in this boot, only clock checks may have failed, and the test
    is skipped: they cannot be judged."""
    if tsc_calibration_failed(out) or LAPIC_TIMER_FAILED in out:
        failed = [ln for ln in out.splitlines() if ln.endswith(": FAIL")]
        assert all("(median of" in ln for ln in failed), out  # only the clock checks
        pytest.skip("the kernel could not calibrate the TSC or the APIC timer in this boot "
                    "(a loaded host): the clock checks cannot be judged")


def redis_cli(port: int, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["redis-cli", "-p", str(port), "--raw", *args], input=data,
                          capture_output=True, timeout=60, **({} if data else {"text": True}))


def redis_ready(vm: UklVm) -> int:
    """The host port of a booted Redis, once it answers PING."""
    vm.wait_for("Ready to accept connections", timeout=240)
    port = vm.port(6379)
    deadline = time.monotonic() + 60
    while redis_cli(port, "PING").stdout.strip() != "PONG":
        assert time.monotonic() < deadline, "no PONG through the forward"
        time.sleep(0.2)
    return port


def run_image(image_dir: Path, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """``python -m ukl_build run IMAGE_DIR --timeout T ARGS``: status, stdout, stderr."""
    proc = run_cli("run", str(image_dir), "--timeout", str(timeout), *args, timeout=timeout + 60)
    return proc.returncode, proc.stdout, proc.stderr


@contextmanager
def booted(image_dir: Path, *run_args: str, forward: Sequence[int] = (),
           timeout: float = 240) -> Iterator[UklVm]:
    """``python -m ukl_build run IMAGE_DIR RUN_ARGS`` as the pytest plugin's UklVm (its
    console streamed, ``vm.wait_for(pattern)``); each port in ``forward`` is reached
    through a free host port, ``vm.port(guest)``.  The VM is stopped on leaving; a failure
    inside carries the end of its console."""
    ports = {guest: free_port() for guest in forward}
    argv = [sys.executable, "-m", "ukl_build", "run", str(image_dir), "--timeout", f"{timeout:g}"]
    for guest, host in ports.items():
        argv += ["--forward", f"{host}:{guest}"]
    vm = UklVm([*argv, *run_args], ports, f"run {image_dir}")
    try:
        yield vm
    except (AssertionError, pytest.fail.Exception) as e:
        raise AssertionError(f"{e}\n--- console of {vm.name} ---\n{vm.console[-4000:]}") from e
    finally:
        vm.stop()


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, str | None]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read(), resp.getheader("Connection")


class FirstClient(threading.Thread):
    """A client that connects as soon as the VM starts (retrying while it is refused)
    and times its first reply: the forward opens only when the guest listens (kernel
    patch 0020), so a connection that succeeds is answered at once, where one made
    into slirp's early forward waited ~6 s for TCP's retransmission."""

    def __init__(self, port: int, request: bytes, deadline: float = 120):
        super().__init__(daemon=True)
        self.port, self.request, self.deadline = port, request, deadline
        self.reply = b""
        self.waited: float | None = None  # connect -> first reply byte, seconds

    def run(self) -> None:
        end = time.monotonic() + self.deadline
        while time.monotonic() < end:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            except ConnectionRefusedError:
                time.sleep(0.02)
                continue
            with sock:
                connected = time.monotonic()
                sock.sendall(self.request)
                self.reply = sock.recv(4096)
                self.waited = time.monotonic() - connected
            return

    def check(self, expect: bytes, within: float = 2.5) -> None:
        self.join(timeout=30)
        assert self.reply.startswith(expect), f"first client got {self.reply[:200]!r}"
        assert self.waited is not None and self.waited < within, \
            f"first reply {self.waited} s after the connection"


def check_httpd(image_dir: Path, *run_args: str, requests: int = 200) -> None:
    """Boot example_apps/httpd, talk HTTP/1.1 to it through a forwarded port; a first
    client connects while it boots (FirstClient)."""
    with booted(image_dir, *run_args, forward=[8080]) as vm:
        first = FirstClient(vm.port(8080), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first.start()
        vm.wait_for("listening on port 8080", timeout=90)
        first.check(b"HTTP/1.1 200 ")
        port = vm.port(8080)
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
    # SIGTERM to the launcher (UklVm.stop) must not leave the VM running
    left = subprocess.run(["pgrep", "-f", f"127[.]0[.]0[.]1:{port}-"], capture_output=True)
    assert left.returncode == 1, "QEMU outlived its launcher"
