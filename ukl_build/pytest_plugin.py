"""pytest plugin (entry point ``pytest11``): test a unikernel from the app's own tests.

::

    def test_hello(ukl_vm):
        vm = ukl_vm(args=["world"])
        assert vm.wait() == 3
        assert "Hello, world" in vm.console

    def test_serves(ukl_vm):
        vm = ukl_vm(forward={0: 8080})          # 0: any free host port
        vm.wait_for("listening")
        urllib.request.urlopen(f"http://127.0.0.1:{vm.port(8080)}/")

The project is the nearest directory above the test file whose pyproject.toml
has a ``[tool.ukl-build]`` table (or ``--ukl-project``, or ``project=``).
It is built through ukl-build's cache once per session and settings (a no-op
when nothing changed).  Each VM is ``python -m ukl_build run`` in a child
process; every VM a test started is stopped when the test ends (QEMU dies with
its runner), and a failing test's report carries each VM's console.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from ukl_build.launcher.cmdline import quote_app_args

DEFAULT_TIMEOUT = 300.0


class UklVm:
    """One booted image: its console as it streams, its exit status, its forwarded ports."""

    def __init__(self, argv: list[str], ports: dict[int, int], name: str) -> None:
        self.name = name
        self._ports = ports
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, text=True, errors="replace",
                                      start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def console(self) -> str:
        """The serial console so far, with the runner's own ``[ukl-build]`` lines."""
        with self._cond:
            return "".join(self._lines)

    @property
    def running(self) -> bool:
        """Whether the VM (its runner) is still running."""
        return self._proc.poll() is None

    def port(self, guest: int) -> int:
        """The host port (on 127.0.0.1) forwarded to ``guest``."""
        try:
            return self._ports[guest]
        except KeyError:
            raise KeyError(f"guest port {guest} is not forwarded "
                           f"(forwarded: {sorted(self._ports)})") from None

    def wait_for(self, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> re.Match[str]:
        """The first console line matching ``pattern``; fails the test if the VM ends or
        ``timeout`` passes first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self._lines)
                ended = self._proc.poll() is not None and not self._reader.is_alive()
                left = deadline - time.monotonic()
                if ended or left <= 0:
                    why = "the VM ended" if ended else f"{timeout:g} s passed"
                    pytest.fail(f"{self.name}: {pattern!r} not on the console; {why}",
                                pytrace=False)
                self._cond.wait(min(left, 1.0))

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The app's exit status (the runner's: 124 timeout, 125 no status)."""
        try:
            status = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"{self.name}: still running after {timeout:g} s; stopped",
                        pytrace=False)
        self._reader.join(5)
        return status

    def kill(self) -> None:
        """SIGKILL to the runner and QEMU at once (their session): the VM ends as a
        crash of its host process would end it, with nothing flushed on the way out."""
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._reader.join(5)

    def stop(self) -> None:
        """Stop the VM (SIGTERM to the runner, which kills QEMU; SIGKILL if it lingers)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._reader.join(5)


def find_project(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` with a [tool.ukl-build] pyproject.toml."""
    for d in (start, *start.parents):
        path = d / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except (OSError, tomllib.TOMLDecodeError):
                continue
            if "ukl-build" in data.get("tool", {}):
                return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Builds:
    """Session builds: one per (project, settings), through ukl-build's cache."""

    def __init__(self) -> None:
        self.image_dirs: dict[tuple[Path, tuple[tuple[str, str], ...]], Path] = {}

    def image_dir(self, project: Path, settings: Mapping[str, str]) -> Path:
        key = (project, tuple(sorted(settings.items())))
        if key not in self.image_dirs:
            from ukl_build.errors import UklError
            from ukl_build.pipeline import build

            try:
                result = build(project, dict(settings))
            except UklError as e:
                pytest.fail(f"ukl-build could not build {project}: {e}", pytrace=False)
            self.image_dirs[key] = result.images.directory
        return self.image_dirs[key]


_BUILDS = pytest.StashKey[_Builds]()
_VMS = pytest.StashKey[list[UklVm]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ukl-build")
    group.addoption("--ukl-project", metavar="DIR", default=None,
                    help="the ukl-build project the ukl_vm fixture boots "
                         "(default: the nearest one above each test file)")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_BUILDS] = _Builds()


@pytest.fixture
def ukl_vm(request: pytest.FixtureRequest) -> Iterator[Callable[..., UklVm]]:
    """Boot the project's unikernel: ``ukl_vm(args=None, forward=None, config_settings=None,
    project=None, timeout=300, run_args=())``; every VM stops when the test ends."""
    vms: list[UklVm] = []
    request.node.stash[_VMS] = vms

    def start(args: Sequence[str] | None = None, forward: Mapping[int, int] | None = None,
              config_settings: Mapping[str, str] | None = None, project: str | Path | None = None,
              timeout: float = DEFAULT_TIMEOUT, run_args: Sequence[str] = ()) -> UklVm:
        where = project or request.config.getoption("--ukl-project")
        proj = Path(where).resolve() if where else find_project(request.path.parent)
        if proj is None:
            pytest.fail(f"ukl_vm: no pyproject.toml with [tool.ukl-build] above {request.path}"
                        " (use --ukl-project or ukl_vm(project=...))", pytrace=False)
        image_dir = request.config.stash[_BUILDS].image_dir(proj, dict(config_settings or {}))
        ports = {guest: host or _free_port() for host, guest in (forward or {}).items()}
        argv = [sys.executable, "-m", "ukl_build", "run", str(image_dir),
                "--timeout", f"{timeout:g}", *run_args]
        for guest, host in ports.items():
            argv += ["--forward", f"{host}:{guest}"]
        if args is not None:
            quote_app_args(list(args))  # a clear error now rather than a mangled argv later
            argv += ["--", *args]
        vm = UklVm(argv, ports, f"ukl_vm {proj.name}")
        vms.append(vm)
        return vm

    yield start
    for vm in vms:
        vm.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[Any]) -> Generator[None, pytest.TestReport,
                                                                       pytest.TestReport]:
    """A failing test's report carries the console of each VM it started."""
    report = yield
    vms = item.stash.get(_VMS, [])
    if report.failed and vms:
        for i, vm in enumerate(vms, 1):
            report.sections.append((f"{vm.name} #{i} console", vm.console or "(nothing)"))
    return report
