"""The benchmark harness with tiny parameters: it builds, boots, measures and reports."""

from __future__ import annotations

import json
import os
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
        [sys.executable, "-m", "benchmarks", "syscall", "boot", "--quick",
         "--work", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "UKL_BUILD_CACHE": str(cache.root)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    res = report["results"]
    getppid = res["syscall"]["per_call"]["getppid"]
    assert getppid["ukl_ns"] > 0 and getppid["user_ns"] > 0 and getppid["ratio_ukl_over_user"] > 0
    assert res["boot_to_first_line_s"]["ukl"] > 0 and res["boot_to_first_line_s"]["user"] > 0
    # the user-mode baseline runs on the UKL configuration minus CONFIG_UKL
    assert "python -m ukl_build build benchmarks/apps/sysbench -C mode=user -C recipes=microvm;server" \
        in report["commands"]
    assert "ratio_ukl_over_user" in proc.stdout
