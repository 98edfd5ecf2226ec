"""python -m benchmarks [all|syscall|boot|size|formats|memory|httpd|redis|build|farm|hardening|
                        protections|per-request|first-reply|class-cycles|firewall]
   [--quick] [--baseline ukl|app] [--json FILE]

Builds what it needs through ukl-build, runs every comparison side by side in
one run (variants alternated, medians of --rounds), prints a table, the
commands used and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import firewall, first_reply, per_request, protections, suites, weights
from benchmarks.harness import Context
from ukl_build.cache import Cache

SUITES = ("syscall", "boot", "size", "formats", "memory", "httpd", "nginx", "redis", "build", "farm",
          "hardening", "protections", "per-request", "first-reply",
          "class-cycles", "firewall")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("suites", nargs="*", default=["all"], choices=[*SUITES, "all"])
    p.add_argument("--quick", action="store_true", help="tiny parameters (for tests)")
    p.add_argument("--rounds", type=int, help="alternating rounds per variant (default 5; quick 1)")
    p.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    p.add_argument("--iterations", type=int, help="system calls per benchmark (default 200000)")
    p.add_argument("--duration", type=float, help="seconds of load per httpd variant (default 10)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--requests", type=int, help="redis-benchmark requests per test (default 20000)")
    p.add_argument("--load", dest="loads", action="append", choices=list(per_request.LOADS),
                   help="per-request: only this load (repeatable; default all)")
    p.add_argument("--rules", help="firewall: rule counts, comma-separated "
                                   "(default 10,100,1000,10000)")
    p.add_argument("--packets", type=int, default=3000,
                   help="firewall: packets in the smaller window of each class (default 3000)")
    p.add_argument("--cold", action="store_true", help="also time a build from an empty cache")
    p.add_argument("--baseline", choices=["ukl", "app"], default="ukl",
                   help="the user-mode kernel: the UKL configuration minus CONFIG_UKL (ukl, "
                        "the default), or the app's own recipes as -C mode=user builds it (app)")
    p.add_argument("--series", help="kernel series, comma-separated (e.g. 6.1,6.12): every suite "
                   "runs on each, one after the other in this run, and the results go under "
                   "linux-<series> (the apps the suites build through ukl-build; the build, "
                   "farm and firewall suites stay on the default)")
    p.add_argument("--work", help="where the benchmark projects are built (default: a temp dir)")
    p.add_argument("--json", help="write the results here as JSON")
    return p.parse_args(argv)


def print_table(results: dict[str, Any], out: Any) -> None:
    def rows(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                rows(f"{prefix}.{k}" if prefix else k, v)
        else:
            out.write(f"  {prefix:<60} {node}\n")

    rows("", results)


def run_suites(ctx: Context, chosen: list[str], ns: argparse.Namespace, iterations: int,
               duration: float, sizes: list[int]) -> None:
    """Each chosen suite in turn, its results into ``ctx.results``."""
    for name in chosen:
        t0 = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        if name == "syscall":
            suites.syscall(ctx, iterations)
        elif name == "boot":
            suites.boot(ctx)
        elif name == "size":
            suites.size(ctx)
        elif name == "formats":
            suites.formats(ctx)
        elif name == "memory":
            suites.memory(ctx)
        elif name == "httpd":
            suites.httpd(ctx, duration, ns.connections, sizes)
        elif name == "nginx":
            suites.nginx(ctx, duration, ns.connections)
        elif name == "redis":
            suites.redis(ctx, ns.requests or (500 if ns.quick else 20000))
        elif name == "build":
            suites.build_times(ctx, ns.cold)
        elif name == "farm":
            suites.farm(ctx)
        elif name == "hardening":
            suites.hardening(ctx, duration, ns.connections, ns.requests or (500 if ns.quick else 20000),
                             iterations)
        elif name == "protections":
            protections.protections(ctx, iterations, ns.requests or (200 if ns.quick else 20000))
        elif name == "per-request":
            per_request.per_request(ctx, ns.requests or (200 if ns.quick else 5000), ns.loads)
        elif name == "first-reply":
            first_reply.first_reply(ctx)
        elif name == "firewall":
            counts = tuple(int(c) for c in ns.rules.split(",")) if ns.rules else (
                (10, 100) if ns.quick else firewall.COUNTS)
            firewall.firewall(ctx, counts, 300 if ns.quick else ns.packets)
        elif name == "class-cycles":
            ctx.results["class_cycles"] = weights.measure_host(ctx.work)
        print(f"[bench] {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    chosen = list(SUITES) if "all" in ns.suites else ns.suites
    rounds = ns.rounds or (1 if ns.quick else 5)
    iterations = ns.iterations or (2000 if ns.quick else 200000)
    duration = ns.duration or (1.0 if ns.quick else 10.0)
    sizes = [64] if ns.quick else [64, 4096, 65536]
    work = Path(ns.work) if ns.work else Path(tempfile.mkdtemp(prefix="ukl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {}
    commands: list[str] = []
    for series in (ns.series.split(",") if ns.series else [None]):
        ctx = Context(work=work / f"linux-{series}" if series else work, cache=Cache(),
                      accel=ns.accel, rounds=rounds, baseline=ns.baseline, kernel_version=series)
        ctx.work.mkdir(parents=True, exist_ok=True)
        run_suites(ctx, chosen, ns, iterations, duration, sizes)
        if series:
            results[f"linux-{series}"] = ctx.results
        else:
            results = ctx.results
        commands += [c for c in ctx.commands if c not in commands]
    report = {
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(), "accel": ns.accel},
        "rounds": rounds,
        "baseline": ns.baseline,
        "results": results,
        "commands": commands,
        "seconds": round(time.monotonic() - started, 1),
    }
    print(f"# {report['command']}  ({rounds} rounds, accel {ns.accel})")
    print_table(results, sys.stdout)
    print("# builds:")
    for c in commands:
        print(f"  {c}")
    text = json.dumps(report, indent=2, sort_keys=True)
    if ns.json:
        Path(ns.json).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
