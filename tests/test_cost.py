"""The cost counter's arithmetic (benchmarks/cost.py): snapshots, per-request rows, ranges."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import cost

SNAPSHOTS = """snap before
kernel other 1000
kernel swapgs 10
app other 500
end
snap after
kernel other 3000
kernel swapgs 30
kernel lfence 8
app other 900
idle other 50
end
snap half
kernel other 1
"""


def test_snapshots_and_per_request_counts() -> None:
    snaps = cost.parse_snapshots(SNAPSHOTS)
    assert set(snaps) == {"before", "after"}  # "half" never ended
    table = cost.per_request(snaps["before"], snaps["after"], requests=4)
    assert table["kernel"] == {"instructions": 507.0, "swapgs": 5.0, "lfence": 2.0}
    assert table["app"] == {"instructions": 100.0}
    assert table["idle"] == {"instructions": 12.5}
    assert table["total"] == {"instructions": 607.0, "swapgs": 5.0, "lfence": 2.0}  # not idle


def test_address_ranges_from_the_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    nm = ("ffffffff81000000 0000000000000040 T _stext\n"
          "ffffffff81200000 0000000000000100 T ukl_app_main\n"
          "ffffffff81200100 0000000000000080 t ukl_app_helper\n"
          "ffffffff81300000 0000000000000010 D ukl_app_data\n"
          "ffffffff81100000 0000000000000020 T default_idle\n"
          "ffffffff81100040 0000000000000060 T do_idle\n")

    def fake(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert argv[:3] == ["nm", "-S", "--defined-only"]
        return subprocess.CompletedProcess(argv, 0, nm, "")

    monkeypatch.setattr(cost.subprocess, "run", fake)
    assert cost.address_ranges(Path("vmlinux")) == [
        ("idle", 0xffffffff81100000, 0xffffffff81100020),
        ("idle", 0xffffffff81100040, 0xffffffff811000a0),
        ("app", 0xffffffff81200000, 0xffffffff81200180)]
    # A named function is a region of its own, ahead of the wider ones; one that is not
    # among the symbols is refused by name.
    assert cost.address_ranges(Path("vmlinux"), ["do_idle", "_stext"])[:3] == [
        ("do_idle", 0xffffffff81100040, 0xffffffff811000a0),
        ("_stext", 0xffffffff81000000, 0xffffffff81000040),
        ("idle", 0xffffffff81100000, 0xffffffff81100020)]
    with pytest.raises(SystemExit, match="no function __x64_sys_nothing"):
        cost.address_ranges(Path("vmlinux"), ["__x64_sys_nothing"])
