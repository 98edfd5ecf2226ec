"""python -m benchmarks.cost IMAGE_DIR [VMLINUX] --forward H:G --ready CMD --load CMD -n N

Exact guest cost per request: boot the image under TCG with our counting plugin
(benchmarks/costcount/ukl_cost.c), wait until ``--ready`` succeeds, take the
plugin's counts, run ``--load`` (which makes N requests), take them again, and
print the difference divided by N: instructions by where they ran (the app's
text, the idle loop, the rest of the kernel, user space) and the instruction
classes whose cost a count hides (syscall, sysret, swapgs, iret, CR3 writes,
wrmsr, lfence, mfence, verw, serialising; and zeroing idioms, which CPUs execute
for free).  ``{port}`` in a command is the forwarded host port.  The wall clock
of the load is printed beside the counts.

The plugin is compiled here against ``qemu-plugin.h`` from Debian's ``qemu``
source package, fetched and verified by apt like every other source.  Counts
are attributed by address: the guest boots with ``nokaslr`` (kernel patch 0017
keeps it from the app) and one vCPU (the plugin's counters are shared).

Example (Redis GET, one client, no pipelining)::

    python -m benchmarks.cost example_apps/redis/build/ukl-build/image VMLINUX \\
        --forward 6379:6379 --ready "redis-cli -p {port} ping" -n 2000 \\
        --load "redis-benchmark -p {port} -t get -n {requests} -c 1 -P 1 -q"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ukl_build.cache import Cache
from ukl_build.progress import Reporter
from ukl_build.settings import AppSourceSettings
from ukl_build.source import fetch_app_source

PLUGIN_SOURCE = Path(__file__).parent / "costcount" / "ukl_cost.c"
# The kernel's idle loop: what a guest runs while it waits for the next request.
IDLE_FUNCTIONS = ("do_idle", "default_idle", "default_idle_call", "arch_cpu_idle",
                  "cpu_idle_poll", "cpuidle_idle_call", "arch_cpu_idle_enter",
                  "arch_cpu_idle_exit", "cpu_startup_entry")

Counts = Counter[tuple[str, str]]


def build_plugin(work: Path, cache: Cache, reporter: Reporter) -> Path:
    """ukl_cost.so, compiled against the plugin header of Debian's QEMU source."""
    source = fetch_app_source(AppSourceSettings(debian="qemu"), "benchmarks.cost", work, cache,
                              reporter)
    source.check_file(cache, "include/qemu/qemu-plugin.h")
    out = work / "ukl_cost.so"
    reporter.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                  "-I", str(source.path / "include" / "qemu"), "-o", str(out),
                  str(PLUGIN_SOURCE), "-lpthread"], step="cost counter (compile the plugin)")
    return out


def text_symbols(symbols: Path) -> list[tuple[str, int, int]]:
    """(name, address, size) of the text symbols of a vmlinux (ELF, read with nm) or of a
    System.map (what a distribution kernel ships instead of its vmlinux: no sizes, so
    each symbol runs to the next one's address)."""
    with open(symbols, "rb") as f:
        elf = f.read(4) == b"\x7fELF"
    if elf:
        out = subprocess.run(["nm", "-S", "--defined-only", str(symbols)], capture_output=True,
                             text=True, check=True).stdout
        return [(parts[3], int(parts[0], 16), int(parts[1], 16))
                for parts in map(str.split, out.splitlines())
                if len(parts) == 4 and parts[2] in "tT"]
    entries = sorted((int(parts[0], 16), parts[1], parts[2])
                     for parts in map(str.split, symbols.read_text().splitlines())
                     if len(parts) == 3)
    return [(name, addr, entries[i + 1][0] - addr)
            for i, (addr, kind, name) in enumerate(entries[:-1]) if kind in "tT"]


def address_ranges(symbols: Path, functions: Sequence[str] = ()) -> list[tuple[str, int, int]]:
    """(name, low, high) from the kernel's symbols (its vmlinux, or a System.map):
    ``functions``, each a region of its own named after it (first, so that they are
    taken out of the wider regions), the idle loop's functions, and the app's text in
    UKL mode (its symbols carry the ukl_app_ prefix)."""
    app: list[tuple[int, int]] = []
    idle: list[tuple[str, int, int]] = []
    named: dict[str, tuple[str, int, int]] = {}
    for name, addr, size in text_symbols(symbols):
        if name in functions:
            named[name] = (name, addr, addr + size)
        elif name.startswith("ukl_app_"):
            app.append((addr, addr + size))
        elif name in IDLE_FUNCTIONS:
            idle.append(("idle", addr, addr + size))
    missing = [f for f in functions if f not in named]
    if missing:
        raise SystemExit(f"{symbols}: no function {missing[0]} among its symbols")
    ranges = [named[f] for f in functions] + idle
    if app:
        ranges.append(("app", min(a for a, _ in app), max(b for _, b in app)))
    return ranges


def parse_snapshots(text: str) -> dict[str, Counts]:
    """The plugin's output: ``snap LABEL``, lines ``REGION CLASS COUNT``, ``end``; the
    snapshots that are complete (whole lines, up to their ``end``)."""
    snaps: dict[str, Counts] = {}
    label, counts = None, Counter[tuple[str, str]]()
    # The plugin may be writing while this reads: the text after the last newline is
    # half a line, and a snapshot counts only once its "end" is there.
    for line in text[:text.rfind("\n") + 1].splitlines():
        if line.startswith("snap "):
            label, counts = line[5:], Counter()
        elif line == "end" and label is not None:
            snaps[label] = counts
            label = None
        elif label is not None:
            region, cls, count = line.split()
            counts[(region, cls)] += int(count)  # ranges that share a name add up
    return snaps


def per_request(before: Counts, after: Counts, requests: int) -> dict[str, dict[str, float]]:
    """Region -> {"instructions": n, CLASS: n} per request, and a "total" region: every
    region but the idle loop (what the guest runs while it waits for the client)."""
    table: dict[str, dict[str, float]] = {}
    for (region, cls), count in (after - before).items():
        for where in (region, *(("total",) if region != "idle" else ())):
            row = table.setdefault(where, {"instructions": 0.0})
            row["instructions"] += count / requests
            if cls != "other":
                row[cls] = row.get(cls, 0.0) + count / requests
    return {r: {k: round(v, 2) for k, v in row.items()} for r, row in sorted(table.items())}


def snapshot(ctl: Path, out: Path, label: str, timeout: float = 30) -> Counts:
    with open(ctl, "w") as f:  # the plugin's thread reads one line per open
        f.write(label + "\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snaps = parse_snapshots(out.read_text())
        if label in snaps:
            return snaps[label]
        time.sleep(0.05)
    raise RuntimeError(f"the counting plugin wrote no snapshot {label!r} into {out}")


def until(cmd: list[str], timeout: float) -> None:
    """Run ``cmd`` until it succeeds; a try that hangs (a client whose first connection
    went to a forward opened before the guest listened) is killed and tried again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0:
                return
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {timeout:.0f} s: {shlex.join(cmd)}")


@dataclass(frozen=True)
class CountedVM:
    """A guest booted under the counting plugin: ``snapshot(label)`` takes its counts."""

    ctl: Path
    out: Path

    def snapshot(self, label: str) -> Counts:
        return snapshot(self.ctl, self.out, label)


@contextmanager
def counted_vm(image_dir: Path, ranges: Sequence[tuple[str, int, int]], forward: str,
               work: Path, timeout: float = 600, cmdline: str = "",
               run_args: Sequence[str] = ()) -> Iterator[CountedVM]:
    """``ukl_build run image_dir`` under the plugin (TCG, one vCPU, ``nokaslr`` and
    ``cmdline``), its counts attributed to ``ranges`` (name, low, high; ranges that
    share a name add up); stopped on leaving.  ``run_args`` go to ``ukl_build run`` as
    they are (e.g. a machine, an -initrd).  The plugin's files and the VM's log stay
    in ``work``."""
    with Reporter(work / "cost.log") as reporter:
        plugin = build_plugin(work, Cache(), reporter)
    listing = work / "ranges.txt"
    listing.write_text("".join(f"{n} {lo:x} {hi:x}\n" for n, lo, hi in ranges))
    out, ctl = work / "counts.txt", work / "ctl"
    ctl.unlink(missing_ok=True)
    os.mkfifo(ctl)
    with open(work / "vm.log", "w") as log:
        vm = subprocess.Popen(
            [sys.executable, "-m", "ukl_build", "run", str(image_dir), "--accel", "tcg",
             "--smp", "1", "--cmdline", " ".join(["nokaslr", *cmdline.split()]),
             "--forward", forward, "--timeout", str(timeout), *run_args, "--qemu-arg=-plugin",
             f"--qemu-arg={plugin},out={out},ctl={ctl},ranges={listing}"],
            stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield CountedVM(ctl, out)
        finally:
            vm.terminate()
            vm.wait(timeout=60)


def measure(image_dir: Path, vmlinux: Path, forward: str, ready: str, load: str, requests: int,
            work: Path, functions: Sequence[str] = (), timeout: float = 600,
            extra_cmdline: str = "", run_args: Sequence[str] = ()) -> dict[str, Any]:
    """Boot ``image_dir`` under the plugin (``vmlinux``: its kernel's symbols, a vmlinux or
    a System.map), wait for ``ready``, count ``load``'s ``requests``.  ``run_args`` go to
    ``ukl_build run`` as they are (e.g. a machine, an -initrd)."""
    port = forward.split(":")[0]

    def command(template: str) -> list[str]:
        return shlex.split(template.format(port=port, requests=requests))

    with counted_vm(image_dir, address_ranges(vmlinux, functions), forward, work, timeout,
                    extra_cmdline, run_args) as vm:
        until(command(ready), 180)
        before = vm.snapshot("before")
        t0 = time.monotonic()
        subprocess.run(command(load), check=True, capture_output=True, timeout=timeout)
        seconds = time.monotonic() - t0
        after = vm.snapshot("after")
    return {"requests": requests, "load": shlex.join(command(load)),
            "wall_seconds": round(seconds, 3), "per_request": per_request(before, after, requests)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cost",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("image_dir", type=Path)
    p.add_argument("vmlinux", type=Path,
                   help="the image's vmlinux, or the kernel's System.map (its symbols)")
    p.add_argument("--forward", required=True, help="HOST:GUEST port")
    p.add_argument("--ready", required=True, help="command that succeeds once the server serves")
    p.add_argument("--load", required=True, help="command that makes {requests} requests")
    p.add_argument("-n", "--requests", type=int, default=2000)
    p.add_argument("--function", action="append", default=[], metavar="NAME",
                   help="count a kernel function's instructions as a region of its own "
                        "(repeatable; e.g. __x64_sys_clock_gettime)")
    p.add_argument("--cmdline", default="", help="more kernel command line (after nokaslr)")
    p.add_argument("--json", type=Path)
    ns = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ukl-cost-") as tmp:
        result = measure(ns.image_dir, ns.vmlinux, ns.forward, ns.ready, ns.load, ns.requests,
                         Path(tmp), ns.function, extra_cmdline=ns.cmdline)
    for region, row in result["per_request"].items():
        extra = ", ".join(f"{k} {v}" for k, v in row.items() if k != "instructions")
        print(f"{region:>8}: {row['instructions']:>10} instructions per request"
              + (f" ({extra})" if extra else ""))
    print(f"load: {result['load']}: {result['wall_seconds']} s")
    if ns.json:
        ns.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
