"""Exact guest cost per request for each server and load, in every mode (issue 29).

Each (app, load) is measured with ``benchmarks.cost``'s counting plugin on
each variant, booted anew per measurement, the variants alternated: UKL,
UKL with shortcuts, user mode as a user builds it (its own default:
``hardened`` and ``mitigations``), and user mode on the UKL kernel's
configuration minus CONFIG_UKL (``mitigations = false`` like UKL mode: the
like-with-like baseline), and the user-mode build on Debian's cloud kernel
(the stock alternative; its symbols from the package's System.map).
Instructions per request leave out the idle loop; the classes an instruction
count hides are beside them, and the modelled cycles (benchmarks/weights.py).
"""

from __future__ import annotations

import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import cost, weights
from benchmarks.harness import Context, alternate, free_port, median
from benchmarks.suites import on_debian_cloud
from ukl_build.pipeline import BuildResult

# name -> (mode, extra settings, the user-mode baseline on the UKL configuration?)
VARIANTS: dict[str, tuple[str, dict[str, str], bool]] = {
    "ukl": ("ukl", {}, False),
    "shortcuts": ("ukl", {"shortcuts": "true"}, False),
    "user": ("user", {}, False),
    "user-as-ukl": ("user", {}, True),
}
# User mode as a user builds it, on Debian's cloud kernel (benchmarks/stock.py), where apt
# can give that kernel: the stock alternative, its symbols from its System.map.
DEBIAN = "debian-cloud"
LOADGEN = shlex.join([sys.executable, "-m", "benchmarks.loadgen"])


@dataclass(frozen=True)
class Load:
    app: str
    guest_port: int
    ready: str  # a command that succeeds once the server serves; {port}: the host port
    load: str  # a command that makes {requests} requests


LOADS: dict[str, Load] = {
    "redis-get": Load("redis", 6379, "redis-cli -p {port} ping",
                         "redis-benchmark -p {port} -t get -n {requests} -c 1 -P 1 -q"),
    "redis-set": Load("redis", 6379, "redis-cli -p {port} ping",
                         "redis-benchmark -p {port} -t set -n {requests} -c 1 -P 1 -q"),
    "redis-get-p16": Load("redis", 6379, "redis-cli -p {port} ping",
                          "redis-benchmark -p {port} -t get -n {requests} -c 1 -P 16 -q"),
    "redis-set-p16": Load("redis", 6379, "redis-cli -p {port} ping",
                          "redis-benchmark -p {port} -t set -n {requests} -c 1 -P 16 -q"),
    "memcached-get": Load("memcached", 11211, LOADGEN + " memcached-set --port {port}",
                          LOADGEN + " memcached-get --port {port} -n {requests}"),
    "memcached-set": Load("memcached", 11211, LOADGEN + " memcached-set --port {port}",
                          LOADGEN + " memcached-set --port {port} -n {requests}"),
    "httpd-64": Load("httpd", 8080, LOADGEN + " http --port {port}",
                       LOADGEN + " http --port {port} -n {requests}"),
    "nginx-index": Load("nginx", 8080, LOADGEN + " http --port {port} --path /",
                        LOADGEN + " http --port {port} --path / -n {requests}"),
}
CLASSES = ("syscall", "sysret", "swapgs", "iret", "cr3_write", "wrmsr", "lfence", "mfence",
           "verw", "serialising", "zero_idiom")


@dataclass(frozen=True)
class Target:
    """What one variant boots: an image directory, its kernel's symbols, and what the
    boot adds to ``ukl_build run`` (a machine, an initramfs) and to the command line."""
    image_dir: Path
    symbols: Path
    run_args: tuple[str, ...] = ()
    cmdline: str = ""

    @classmethod
    def of(cls, result: BuildResult) -> Target:
        return cls(result.images.directory, result.kernel.vmlinux)


def measure(target: Target, load: Load, requests: int, cmdline: str = "") -> dict[str, float]:
    """One boot of ``target`` under the counting plugin (``cmdline`` appended), ``load``
    run against it: per request, the instructions without the idle loop and the classes
    (as ``benchmarks.cost``'s "total"), the app's own instructions, and the wall clock of
    the load."""
    with tempfile.TemporaryDirectory(prefix="ukl-per-request-") as tmp:
        out = cost.measure(target.image_dir, target.symbols,
                           f"{free_port()}:{load.guest_port}", load.ready, load.load,
                           requests, Path(tmp),
                           extra_cmdline=" ".join(filter(None, (target.cmdline, cmdline))),
                           run_args=target.run_args)
    total = out["per_request"]["total"]
    app = out["per_request"].get("app", out["per_request"].get("user", {}))
    return {**total, "app_instructions": app.get("instructions", 0.0),
            "wall_seconds": out["wall_seconds"]}


def _targets(ctx: Context, apps: set[str]) -> tuple[dict[tuple[str, str], Target], str]:
    """Each (app, variant) to boot; Debian's cloud kernel where apt can give it (and why
    not, where it cannot)."""
    targets: dict[tuple[str, str], Target] = {}
    origin = ""
    for app in sorted(apps):
        built = {name: ctx.build(app, mode, baseline=baseline, **extra)
                 for name, (mode, extra, baseline) in VARIANTS.items()}
        targets.update({(app, name): Target.of(b) for name, b in built.items()})
        # Debian's kernel runs the user-mode build as a user makes it.
        cloud, origin = on_debian_cloud(ctx, built["user"], app)
        if cloud is not None and cloud.symbols is not None:
            targets[(app, DEBIAN)] = Target(cloud.directory, cloud.symbols,
                                            tuple(cloud.run_args()),
                                            cloud.options.get("extra_cmdline", ""))
    return targets, origin


def per_request(ctx: Context, requests: int, loads: list[str] | None = None) -> None:
    """Instructions (and expensive classes) per request for each load, each variant."""
    chosen = {name: LOADS[name] for name in (loads or LOADS)}
    targets, origin = _targets(ctx, {load.app for load in chosen.values()})
    ctx.note(f"python -m benchmarks.cost IMAGE_DIR VMLINUX|SYSTEM_MAP --forward PORT:GUEST "
             f"--ready READY --load LOAD -n {requests} (READY and LOAD: "
             "benchmarks/per_request.py LOADS)")
    table: dict[str, Any] = {}
    for name, load in chosen.items():
        variants = [v for v in (*VARIANTS, DEBIAN) if (load.app, v) in targets]
        samples = alternate({v: (lambda v=v, load=load: measure(targets[(load.app, v)], load,
                                                                requests))
                             for v in variants}, ctx.rounds)
        row: dict[str, Any] = {"load": load.load}
        for v in variants:
            row[f"{v}_instructions"] = round(median(s["instructions"] for s in samples[v]))
            row[f"{v}_instructions_rounds"] = [round(s["instructions"]) for s in samples[v]]
            row[f"{v}_app_instructions"] = round(median(s["app_instructions"]
                                                        for s in samples[v]))
            row[f"{v}_wall_seconds"] = round(median(s["wall_seconds"] for s in samples[v]), 3)
            for cls in CLASSES:
                row[f"{v}_{cls}"] = round(median(s.get(cls, 0.0) for s in samples[v]), 2)
            row[f"{v}_modelled_cycles"] = round(median(
                weights.modelled_cycles(s["instructions"], s) for s in samples[v]))
        for v in ("ukl", "shortcuts"):
            for base in ("user", "user-as-ukl", DEBIAN):
                if base not in variants:
                    continue
                row[f"ratio_{v}_over_{base}"] = round(row[f"{v}_instructions"]
                                                      / row[f"{base}_instructions"], 3)
                row[f"cycles_ratio_{v}_over_{base}"] = round(
                    row[f"{v}_modelled_cycles"] / row[f"{base}_modelled_cycles"], 3)
        table[name] = row
    ctx.results["per_request"] = {
        "requests": requests, "rounds": ctx.rounds, "loads": table,
        "debian_cloud_kernel": origin or "not measured",
        "weights": {name: {"cycles": w.cycles, "source": w.source}
                    for name, w in weights.WEIGHTS.items()}}
