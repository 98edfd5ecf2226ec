"""The cost counter (benchmarks/cost.py and its plugin): the arithmetic of snapshots,
per-request rows and ranges, and the plugin itself counting a program whose instructions
are known, run under QEMU's user-mode emulator (the same TCG and plugin API as the
system emulator the benchmark uses)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import cost, per_request, weights
from ukl_build.progress import Reporter

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
    # read while the plugin writes: half a line at the end is not a line yet
    assert set(cost.parse_snapshots(SNAPSHOTS + "kernel oth")) == {"before", "after"}


def test_address_ranges_from_the_symbols(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
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
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF\x02\x01\x01")  # read with nm (faked here)
    assert cost.address_ranges(vmlinux) == [
        ("idle", 0xffffffff81100000, 0xffffffff81100020),
        ("idle", 0xffffffff81100040, 0xffffffff811000a0),
        ("app", 0xffffffff81200000, 0xffffffff81200180)]
    # A named function is a region of its own, ahead of the wider ones; one that is not
    # among the symbols is refused by name.
    assert cost.address_ranges(vmlinux, ["do_idle", "_stext"])[:3] == [
        ("do_idle", 0xffffffff81100040, 0xffffffff811000a0),
        ("_stext", 0xffffffff81000000, 0xffffffff81000040),
        ("idle", 0xffffffff81100000, 0xffffffff81100020)]
    with pytest.raises(SystemExit, match="no function __x64_sys_nothing"):
        cost.address_ranges(vmlinux, ["__x64_sys_nothing"])


def test_address_ranges_from_a_system_map(tmp_path: Path) -> None:
    # A distribution kernel ships System.map, not vmlinux: no sizes, so a symbol runs to
    # the next address; data symbols end the text before them but are no regions.
    system_map = tmp_path / "System.map-6.1.0-cloud-amd64"
    system_map.write_text("ffffffff81100040 T do_idle\n"
                          "ffffffff81100000 T default_idle\n"
                          "ffffffff81100020 t default_idle_call_tail\n"
                          "ffffffff811000a0 D some_data\n"
                          "ffffffff811000c0 T last\n")
    assert cost.address_ranges(system_map) == [
        ("idle", 0xffffffff81100000, 0xffffffff81100020),
        ("idle", 0xffffffff81100040, 0xffffffff811000a0)]


# 1000 rounds of a loop whose every instruction is known: two lfence, an mfence, a cpuid
# (serialising), a verw, an iretq to the next instruction (same privilege level), a
# getppid system call, three zeroing idioms (xor or sub of a register with itself, REX
# forms too), and 13 ordinary instructions (one an xor of two different registers); the
# loop is the region "body" (between the symbols body and done), the rest "user".  The
# classes that need ring 0 (swapgs, sysret, wrmsr, CR3 writes) cannot run in a user-mode
# program.
MIX = """\
\t.globl _start
_start:
\tmov $1000, %r12d
\t.globl body
body:
\tlfence
\tmfence
\tlfence
\txor %eax, %eax
\tcpuid
\tverw sel(%rip)
\txor %r8d, %r8d
\tsub %rcx, %rcx
\txor %r8d, %eax
\tmov %rsp, %rax
\tmov %ss, %ecx
\tpush %rcx
\tpush %rax
\tpushf
\tmov %cs, %ecx
\tpush %rcx
\tlea 2f(%rip), %rax
\tpush %rax
\tiretq
2:\tmov $110, %eax
\tsyscall
\tdec %r12d
\tjnz body
\t.globl done
done:
\tmov $60, %eax
\txor %edi, %edi
\tsyscall
\t.data
sel:\t.word 0
"""


@pytest.mark.kernel  # slow: compiles the plugin against Debian's qemu source, fetched
def test_the_plugin_counts_a_known_instruction_mix(cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert shutil.which("qemu-x86_64"), "qemu-user (ukl_build/host_packages.py) is missing"
    (tmp_path / "mix.S").write_text(MIX)
    program = tmp_path / "mix"
    subprocess.run(["gcc", "-nostdlib", "-static", "-o", str(program), str(tmp_path / "mix.S")],
                   check=True)
    symbols = dict(line.split()[::-2] for line in subprocess.run(
        ["nm", str(program)], capture_output=True, text=True, check=True).stdout.splitlines()
        if line.split()[-1] in ("body", "done"))
    (tmp_path / "ranges").write_text(f"body {symbols['body']} {symbols['done']}\n")
    with Reporter(tmp_path / "cost.log") as reporter:
        plugin = cost.build_plugin(tmp_path, cache, reporter)
    out = tmp_path / "counts.txt"
    subprocess.run(["qemu-x86_64", "-plugin", f"{plugin},out={out},ranges={tmp_path / 'ranges'}",
                    str(program)], check=True, timeout=120)
    counts = cost.parse_snapshots(out.read_text())["exit"]
    assert {k: v for k, v in counts.items() if k[0] == "body"} == {
        ("body", "lfence"): 2000, ("body", "mfence"): 1000, ("body", "serialising"): 1000,
        ("body", "verw"): 1000, ("body", "iret"): 1000, ("body", "syscall"): 1000,
        ("body", "zero_idiom"): 3000, ("body", "other"): 13000}
    # Outside the named range: the loop counter's set-up, and the exit system call.
    assert {k: v for k, v in counts.items() if k[0] != "body"} == {
        ("user", "other"): 2, ("user", "zero_idiom"): 1, ("user", "syscall"): 1}


def test_modelled_cycles_weigh_the_classes() -> None:
    weights_ = {"syscall": weights.Weight(100, "a"), "zero_idiom": weights.Weight(0, "b")}
    # 1,000 instructions of which 2 syscalls (100 each) and 10 zeroing idioms (0 each):
    # 988 ordinary + 200 + 0; a class without a weight (lfence here) counts as ordinary,
    # and so do the keys that are not classes.
    assert weights.modelled_cycles(1000, {"syscall": 2, "zero_idiom": 10, "lfence": 3,
                                          "wall_seconds": 9.0}, weights_) == 1188
    # Every class the plugin counts has a weight with its source.
    assert set(weights.WEIGHTS) == set(per_request.CLASSES)
    assert all(w.source for w in weights.WEIGHTS.values())


def test_class_cycles_runs_on_the_host(tmp_path: Path) -> None:
    measured = weights.measure_host(tmp_path)
    assert set(measured) == {"call_overhead", "lfence", "mfence", "verw", "iret",
                             "serialising", "syscall_round_trip"}
    assert measured["syscall_round_trip"] > measured["lfence"] > 0
