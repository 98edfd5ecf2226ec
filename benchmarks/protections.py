"""What each protection costs where a ring-0 server spends its time (issue 29).

One option (or tight group of options) at a time against today's UKL default
(``hardened``, no ``mitigations``): exact instructions per ``getppid`` (the
sysbench app under ``-icount shift=0``, where the guest clock counts
instructions) and per Redis GET (``benchmarks.cost``'s counting plugin, with
the instruction classes an instruction count hides).  Options the kernel can
turn off at boot are measured on the default kernel with that command line;
the others each need a kernel of their own (``kconfig.*``), which makes this
the most expensive suite to build: about ten UKL kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.harness import Context, alternate, median
from benchmarks.per_request import LOADS, measure
from benchmarks.suites import sysbench


@dataclass(frozen=True)
class Variant:
    """A UKL build (``settings``, as -C) booted with ``cmdline`` appended."""

    what: str
    settings: dict[str, str] = field(default_factory=dict)
    cmdline: str = ""


# Against the default (first); each "on" row adds, each "off" row takes away.
MITIGATED = {"mitigations": "true"}
VARIANTS: dict[str, Variant] = {
    "default": Variant("today's UKL default: hardened, no mitigations recipe"),
    "mitigations": Variant("+ the mitigations recipe (all of it; PTI stays off in UKL mode)",
                           MITIGATED),
    "mitigations-no-retpoline": Variant(
        "+ mitigations without retpolines and return thunks (RETPOLINE=n takes RETHUNK, "
        "UNRET and SRSO with it)", {**MITIGATED, "kconfig.RETPOLINE": "n"}),
    "mitigations-no-sls": Variant("+ mitigations without SLS", {**MITIGATED, "kconfig.SLS": "n"}),
    "mitigations-no-entry": Variant(
        "+ mitigations without the UNRET, IBPB, IBRS and SRSO entry mitigations",
        {**MITIGATED, "kconfig.CPU_UNRET_ENTRY": "n", "kconfig.CPU_IBPB_ENTRY": "n",
         "kconfig.CPU_IBRS_ENTRY": "n", "kconfig.CPU_SRSO": "n"}),
    "no-stackprotector-strong": Variant(
        "- the strong stack protector (the plain one stays: a hardened UKL app's canary "
        "checks need the kernel's)", {"kconfig.STACKPROTECTOR_STRONG": "n"}),
    "no-zero-call-used-regs": Variant("- zeroed call-used registers",
                                      {"kconfig.ZERO_CALL_USED_REGS": "n"}),
    "no-init-stack-zero": Variant("- zeroed stack locals",
                                  {"kconfig.INIT_STACK_ALL_ZERO": "n",
                                   "kconfig.INIT_STACK_NONE": "y"}),
    "no-kstack-offset": Variant("- the random kernel-stack offset per system call",
                                cmdline="randomize_kstack_offset=off"),
    "no-hardened-usercopy": Variant("- hardened usercopy", cmdline="hardened_usercopy=off"),
    "no-init-on-alloc": Variant("- zeroing on allocation", cmdline="init_on_alloc=0"),
    "unprotected": Variant("hardened = false: none of the above", {"hardened": "false"}),
}


def protections(ctx: Context, iterations: int, requests: int) -> None:
    """Instructions per getppid and per Redis GET for each variant, side by side."""
    built = {name: (ctx.build("sysbench", "ukl", **v.settings),
                    ctx.build("redis", "ukl", **v.settings)) for name, v in VARIANTS.items()}
    calls = max(iterations // 10, 100)
    ctx.note(f"python -m ukl_build run <sysbench image> --accel tcg --cmdline CMDLINE "
             f"--qemu-arg=-icount --qemu-arg=shift=0 -- {calls}")
    redis_get = LOADS["redis-get"]
    ctx.note(f"python -m benchmarks.cost <redis image> <its vmlinux> "
             f"--forward PORT:{redis_get.guest_port} --ready '{redis_get.ready}' "
             f"-n {requests} --load '{redis_get.load}' (plus --cmdline CMDLINE)")
    getppid = {name: sysbench(ctx, built[name][0].images.directory, calls, True,
                              f"protections {name}", v.cmdline)["getppid"]
               for name, v in VARIANTS.items()}  # exact: one run each
    samples = alternate({name: (lambda n=name, v=v: measure(built[n][1], redis_get, requests,
                                                            v.cmdline))
                         for name, v in VARIANTS.items()}, ctx.rounds)
    base_ppid, base_get = getppid["default"], median(s["instructions"]
                                                     for s in samples["default"])
    table: dict[str, Any] = {}
    for name, v in VARIANTS.items():
        get = median(s["instructions"] for s in samples[name])
        row: dict[str, Any] = {
            "what": v.what, "settings": v.settings, "cmdline": v.cmdline,
            "getppid_instructions": round(getppid[name], 1),
            "getppid_over_default": round(getppid[name] / base_ppid, 3),
            "get_instructions_median": round(get),
            "get_instructions_rounds": [round(s["instructions"]) for s in samples[name]],
            "get_over_default": round(get / base_get, 3),
            "get_wall_seconds_median": round(median(s["wall_seconds"] for s in samples[name]), 3),
        }
        classes = {k for s in samples[name] for k in s
                   if k not in ("instructions", "app_instructions", "wall_seconds")}
        for cls in sorted(classes):
            row[f"get_{cls}_median"] = round(median(s.get(cls, 0.0) for s in samples[name]), 2)
        table[name] = row
    ctx.results["protections"] = {"rounds": ctx.rounds, "getppid_calls": calls,
                                  "redis_requests": requests, "variants": table}
