"""Modelled cycles: the counting plugin's instruction classes weighted by what each costs.

An instruction count hides what a `syscall`, a CR3 write or a `verw` costs; the
modelled cycles put it back.  The model is deliberately simple and says so: an
ordinary instruction costs 1 cycle, a zeroing idiom 0 (CPUs resolve `xor r,r`
when renaming registers), and each expensive class its weight below, each with
where the figure comes from: a published one where one exists, else measured
on the host CPU with ``python -m benchmarks class-cycles`` (costcount/classcycles.c,
TSC ticks, best of 25 loops of 16,000, a `nop` loop subtracted).  The absolute
figure means little (real CPUs retire several ordinary instructions per cycle,
or wait on memory); the ratio between two variants of the same request shows
whether the classes one of them avoids change the picture.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOST = ("measured on the CI host (AMD EPYC, a KVM guest) on 2026-12-05 with "
        "`python -m benchmarks class-cycles`")


@dataclass(frozen=True)
class Weight:
    cycles: float
    source: str


WEIGHTS: dict[str, Weight] = {
    "syscall": Weight(123, "half of a system call round trip (`syscall`, the host kernel's "
                           "entry and exit for an unknown call number, `sysret`: 245 ticks), "
                           + HOST + "; an upper bound, since it includes the host's entry "
                           "code"),
    "sysret": Weight(122, "the other half of the same round trip"),
    "swapgs": Weight(1, "no published figure found and not executable in user mode: modelled "
                        "as an ordinary instruction, which understates it"),
    "iret": Weight(100, "`iretq` to the same privilege level, " + HOST + " (a ring-crossing "
                        "return costs more: about 270 cycles kernel to user, measured with "
                        "the TSC on a Xeon E5 v3, lastweek.io/notes/xperf)"),
    "cr3_write": Weight(100, "\"Moves to CR3 are on the order of a hundred cycles\" (the "
                             "kernel's Documentation/x86/pti.rst, Overhead)"),
    "wrmsr": Weight(60, "\"WRMSR is very slow (60+ cycles)\" (Martin J. Bligh, LKML, "
                        "2003-02-11, Pentium 4); a lower bound, and in a VM a write to an "
                        "MSR the hypervisor intercepts costs an exit (see serialising)"),
    "lfence": Weight(12, HOST + " (an answer to Stack Overflow question 51986046 measured "
                         "about 9.3 cycles of fixed cost per `lfence` on Skylake with perf "
                         "counters)"),
    "mfence": Weight(40, HOST),
    "verw": Weight(103, HOST + "; this CPU is not affected by MDS, so its `verw` does not "
                          "clear buffers, and the figure is the segment check alone"),
    "serialising": Weight(9200, "`cpuid`, " + HOST + ": in a VM it always exits to the "
                                "hypervisor, and that is its cost here"),
    "zero_idiom": Weight(0, "resolved when registers are renamed, no execution unit (Intel 64 "
                            "and IA-32 Architectures Optimization Reference Manual, \"Clearing "
                            "Registers and Dependency Breaking Idioms\")"),
}


def modelled_cycles(instructions: float, classes: Mapping[str, float],
                    weights: Mapping[str, Weight] | None = None) -> float:
    """Cycles of ``instructions`` (all of them, the classes included) of which ``classes``
    gives the expensive ones by name: each ordinary instruction 1, each class its weight.
    A class the weights do not know counts as ordinary."""
    table = WEIGHTS if weights is None else weights
    return instructions + sum(count * (table[name].cycles - 1)
                              for name, count in classes.items() if name in table)


def measure_host(work: Path) -> dict[str, float]:
    """Compile and run costcount/classcycles.c: ticks per class on this host's CPU."""
    source = Path(__file__).with_name("costcount") / "classcycles.c"
    program = work / "classcycles"
    subprocess.run(["gcc", "-O2", "-o", str(program), str(source)], check=True)
    out = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    return {name: float(value) for name, value in (line.split() for line in out.splitlines())}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ukl-class-cycles-") as tmp:
        measured = measure_host(Path(tmp))
    for name, ticks in measured.items():
        print(f"{name:<20} {ticks:8.1f} ticks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
