"""Building and booting what the benchmarks compare, and the statistics they report.

Every figure is a ratio of two measurements taken in the same run, with the
variants alternated A/B/A/B, and each measurement the median of its rounds.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ukl_build.cache import Cache
from ukl_build.launcher.firmware import firmware_files
from ukl_build.launcher.options import RunOptions
from ukl_build.launcher.process import die_with_parent
from ukl_build.launcher.qemu import BootFiles, qemu_argv
from ukl_build.launcher.run import run_image
from ukl_build.launcher.volumes import attach, prepare
from ukl_build.pipeline import BuildResult, build

REPO = Path(__file__).resolve().parent.parent
APPS = {
    "sysbench": REPO / "benchmarks" / "apps" / "sysbench",
    "hello": REPO / "example_apps" / "hello",
    "httpd": REPO / "example_apps" / "httpd",
    "redis": REPO / "example_apps" / "redis",
    "memcached": REPO / "example_apps" / "memcached",
    "nginx": REPO / "example_apps" / "nginx",
    "netinit": REPO / "benchmarks" / "apps" / "netinit",
}


@dataclass
class Context:
    """Where builds go, how VMs run, and everything measured so far."""

    work: Path
    cache: Cache
    accel: str = "tcg"
    rounds: int = 3
    # "ukl": user mode runs on the UKL kernel's configuration minus CONFIG_UKL (like with
    # like, what every published figure uses); "app": on the app's own recipes, as a user
    # builds it with -C mode=user (the test suite's kernels: no configuration of its own).
    baseline: str = "ukl"
    # The kernel series every ctx.build() asks for (-C kernel.version), or the default.
    kernel_version: str | None = None
    commands: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    _builds: dict[tuple[str, str, tuple[tuple[str, str], ...]], BuildResult] = field(
        default_factory=dict)

    def build(self, app: str, mode: str, baseline: bool = True, **settings: str) -> BuildResult:
        """The app built for ``mode``; in user mode on the UKL kernel's configuration minus
        CONFIG_UKL (``baseline``, unless the context's baseline is "app"), or else on the
        app's own recipes, as a user builds it."""
        baseline = mode == "user" and baseline and self.baseline == "ukl"
        if self.kernel_version is not None:
            settings = {"kernel.version": self.kernel_version, **settings}
        own = {"baseline": "no"} if mode == "user" and not baseline else {}
        key = (app, mode, tuple(sorted({**settings, **own}.items())))
        if key not in self._builds:
            project = self.work / "-".join([app, mode, *(f"{k}={v}" for k, v in key[2])])
            # Refreshed on every run: a --work dir kept from an earlier run must not
            # benchmark stale sources (its build/ stays, for incremental builds).
            shutil.copytree(APPS[app], project, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("build", "dist"))
            cs = (self.config_settings(project, mode, settings) if baseline
                  else {"mode": mode, **settings})
            self.note(f"python -m ukl_build build {APPS[app].relative_to(REPO)} "
                      + " ".join(f"-C {k}={v}" for k, v in cs.items()))
            self._builds[key] = build(project, cs, cache=self.cache, stream=io.StringIO())
        return self._builds[key]

    @staticmethod
    def config_settings(project: Path, mode: str, settings: dict[str, str] | None = None
                        ) -> dict[str, str]:
        cs = {"mode": mode, **(settings or {})}
        if mode == "user":
            # The baseline runs on the UKL kernel's configuration minus CONFIG_UKL: the
            # ukl recipe's requires (server), and UKL mode's choice of mitigations (off by
            # default; what the ukl recipe takes back, page-table isolation, is theirs).
            recipes = read_recipes(project)
            cs.setdefault("recipes", ";".join(recipes if "server" in recipes
                                              else [*recipes, "server"]))
            cs.setdefault("mitigations", "false")
        return cs

    def note(self, command: str) -> None:
        if command not in self.commands:
            self.commands.append(command)

    def options(self, **kw: Any) -> RunOptions:
        return RunOptions(accel=self.accel, **kw)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a VM's forward)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_vms(port: int) -> None:
    """Stop the VMs that forward host ``port`` (QEMU names them after their forwards)."""
    subprocess.run(["pkill", "-f", f"127[.]0[.]0[.]1:{port}-"], check=False)


def read_recipes(project: Path) -> list[str]:
    with open(project / "pyproject.toml", "rb") as f:
        data = tomllib.load(f)
    return list(data["tool"]["ukl-build"].get("recipes", ["microvm"]))


def run_capture(image_dir: Path, opts: RunOptions) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run_image(image_dir, opts, out=out, err=err)
    return status, out.getvalue() + err.getvalue()


def alternate(variants: dict[str, Callable[[], float | dict[str, float]]],
              rounds: int) -> dict[str, list[Any]]:
    """Run each variant once per round, in turn (A B A B ...), collecting the results."""
    samples: dict[str, list[Any]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(fn())
    return samples


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def boot_to_line(image_dir: Path, manifest: dict[str, Any], opts: RunOptions, pattern: str,
                 timeout: float = 120.0, kernel: Path | None = None,
                 initrd: Path | None = None, extra_append: str = "") -> float:
    """Seconds from QEMU's start to the first console line matching ``pattern``."""
    with tempfile.TemporaryDirectory(prefix="ukl-bench-fw-") as tmp:
        firmware = firmware_files(manifest, image_dir, opts, Path(tmp))
        # Volumes without a file get a scratch one here, formatted before QEMU starts (as
        # `run` does; Redis's /data is one), so the time is the boot's alone.
        boot = BootFiles(firmware=firmware, scratch=Path(tmp))
        prepare(attach(manifest.get("volumes", {}), opts.volumes, boot.scratch), io.StringIO())
        argv = qemu_argv(manifest, image_dir, opts, opts.accel, boot=boot)
        return _time_to_line(argv, pattern, timeout, kernel, initrd, extra_append)


def _time_to_line(argv: list[str], pattern: str, timeout: float, kernel: Path | None,
                  initrd: Path | None, extra_append: str) -> float:
    if kernel is not None:
        argv[argv.index("-kernel") + 1] = str(kernel)
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    if extra_append:
        i = argv.index("-append") + 1
        argv[i] = extra_append + " " + argv[i]
    rx = re.compile(pattern)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
    assert proc.stdout is not None
    timer = threading.Timer(timeout, proc.kill)  # a silent, hung guest must not hang us
    timer.start()
    tail: list[str] = []
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            if rx.search(line):
                return time.monotonic() - start
            tail = [*tail[-20:], line]
        raise RuntimeError(f"{pattern!r} not seen within {timeout:.0f} s; last lines:\n"
                           + "".join(tail))
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
