"""The benchmark harness with tiny parameters: it builds, boots, measures and reports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.harness import alternate, median, percentile

REPO = Path(__file__).resolve().parent.parent


def test_alternate_runs_variants_in_turn() -> None:
    order: list[str] = []
    samples = alternate({"a": lambda: order.append("a") or 1.0,
                         "b": lambda: order.append("b") or 2.0}, rounds=3)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert samples == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}
    assert median([3, 1, 2]) == 2 and percentile([1, 2, 3, 4], 0.99) == 4


@pytest.mark.kernel
def test_harness_quick(cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        # 50,000 calls: the guest clock ticks every 4 ms under TCG (jiffies), and
        # 2,000 getppid calls often fit inside one tick and measure 0 ns.
        [sys.executable, "-m", "benchmarks", "syscall", "boot", "--quick", "--iterations", "50000",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "UKL_BUILD_CACHE": str(cache.root)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    res = report["results"]
    getppid = res["syscall"]["per_call"]["getppid"]
    assert getppid["ukl_ns"] > 0 and getppid["user_ns"] > 0 and getppid["ratio_ukl_over_user"] > 0
    assert getppid["shortcuts_ns"] > 0 and getppid["ratio_shortcuts_over_user"] > 0
    # Instruction counts (-icount) are exact: the shortcut runs fewer than the syscall path.
    assert 0 < getppid["shortcuts_instructions"] < getppid["ukl_instructions"] \
        < getppid["user_instructions"]
    assert res["boot_to_first_line_s"]["ukl-pvh"] > 0
    assert "python -m ukl_build build benchmarks/apps/sysbench -C mode=ukl -C shortcuts=true" \
        in report["commands"]
    assert res["boot_to_first_line_s"]["ukl"] > 0 and res["boot_to_first_line_s"]["user"] > 0
    # the user-mode baseline runs on the UKL configuration minus CONFIG_UKL
    assert ("python -m ukl_build build benchmarks/apps/sysbench -C mode=user "
            "-C recipes=net;virtio-net;microvm;server") in report["commands"]
    # 64-byte TCP round trips over loopback: the network stack's cost, counted exactly
    assert res["syscall"]["per_call"]["tcp_roundtrip_64B"]["user_instructions"] > 1000
    assert "ratio_ukl_over_user" in proc.stdout

    # The guest profiler, on the direct-boot image the boot suite built.
    image = tmp_path / "work" / "hello-ukl-formats=bzimage;pvh" / "build/ukl-build/image"
    prof = subprocess.run([sys.executable, "-m", "benchmarks.profile", str(image),
                           "--until", "exit status", "--timeout", "120"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert prof.returncode == 0, prof.stdout + prof.stderr
    top = prof.stdout.split("# top functions")[1].split("# timeline")[0]
    assert re.search(r"^\s+\d+\.\d%\s+\d+\s+\S+$", top, re.M), prof.stdout
    assert "Hello, world, from a unikernel! (CPL 0)" in prof.stdout


def test_report_renders_every_section() -> None:
    from benchmarks.report import render

    report = {
        "command": "python -m benchmarks all", "rounds": 3, "commands": ["python -m ukl_build build x"],
        "machine": {"cpus": 2, "accel": "tcg", "kernel": "6.1"},
        "results": {
            "syscall": {"per_call": {"getppid": {"ukl_ns": 1.0, "shortcuts_ns": 0.2, "user_ns": 2.0,
                                                 "ratio_ukl_over_user": 0.5,
                                                 "ratio_shortcuts_over_user": 0.1}}},
            "boot_to_first_line_s": {"ukl": 1.0, "user": 1.2, "ratio_ukl_over_user": 0.83},
            "bzimage_bytes": {"hello-ukl": 1},
            "httpd_min_memory_mib": {"ukl": 20},
            "httpd": {"connections": 4, "duration_s": 5, "bodies": {"64B": {
                "ukl_req_per_s": 2, "user_req_per_s": 1, "ratio_req_per_s_ukl_over_user": 2.0,
                "ukl_p50_ms": 1, "ukl_p99_ms": 2, "user_p50_ms": 1, "user_p99_ms": 3}}},
            "build": {"noop_ukl_s": 0.5},
        },
    }
    md = render(report)
    for heading in ("System calls", "Boot", "bzImage size", "Smallest guest memory", "httpd",
                    "Rebuilds"):
        assert f"### {heading}" in md
    assert "| getppid | 1.0 | 0.2 | 2.0 | 0.5 | 0.1 |" in md
