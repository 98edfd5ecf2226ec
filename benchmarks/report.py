"""Render a results JSON of ``python -m benchmarks`` as the Markdown tables of docs/performance.md.

    python -m benchmarks.report results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def render(report: dict[str, Any]) -> str:
    r = report["results"]
    out = [f"Produced by `{report['command']}` ({report['rounds']} alternating rounds per "
           f"variant, medians; {report['machine']['cpus']} CPUs, accel "
           f"{report['machine']['accel']}, host kernel {report['machine']['kernel']}).", ""]
    if "syscall" in r:
        out += ["### System calls (ns per call, same kernel configuration but CONFIG_UKL)", "",
                "| call | UKL | UKL + shortcuts | user | UKL/user | shortcuts/user |",
                "|---|---:|---:|---:|---:|---:|"]
        for name, row in r["syscall"]["per_call"].items():
            out.append(f"| {name} | {row['ukl_ns']} | {row.get('shortcuts_ns', 'n/a')} | "
                       f"{row['user_ns']} | {row['ratio_ukl_over_user']} | "
                       f"{row.get('ratio_shortcuts_over_user', 'n/a')} |")
        out.append("")
        rows = {k: v for k, v in r["syscall"]["per_call"].items() if "ukl_instructions" in v}
        if rows:
            out += ["Guest instructions per call (`-icount shift=0`: exact, noise-free; a "
                    "`syscall`/`sysret` counts as one instruction whatever it costs):", "",
                    "| call | UKL | UKL + shortcuts | user | UKL/user | shortcuts/user |",
                    "|---|---:|---:|---:|---:|---:|"]
            out += [f"| {k} | {v['ukl_instructions']} | {v['shortcuts_instructions']} | "
                    f"{v['user_instructions']} | {v['instructions_ratio_ukl_over_user']} | "
                    f"{v['instructions_ratio_shortcuts_over_user']} |" for k, v in rows.items()]
            out.append("")
    if "boot_to_first_line_s" in r:
        b = r["boot_to_first_line_s"]
        labels = {"ukl": "UKL, bzImage", "user": "user mode, bzImage",
                  "ukl-pvh": "UKL, vmlinux direct boot (PVH)",
                  "debian-cloud": "Debian cloud kernel, vmlinuz, same /init",
                  "debian-cloud-pvh": "Debian cloud kernel, vmlinux direct boot, same /init"}
        out += ["### Boot: QEMU start to the app's first line (s)", "",
                "| kernel | s |", "|---|---:|"]
        out += [f"| {label} | {b[k]} |" for k, label in labels.items() if k in b]
        out += ["", "| ratio | |", "|---|---:|"]
        out += [f"| {k.removeprefix('ratio_').replace('_over_', ' / ')} | {v} |"
                for k, v in b.items() if k.startswith("ratio_")]
        out.append("")
    if "bzimage_bytes" in r:
        out += ["### bzImage size (bytes)", "", "| image | bytes |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in r["bzimage_bytes"].items()]
        out.append("")
    if "formats" in r:
        f = r["formats"]
        fmts = ("bzimage", "pvh", "efi", "disk")
        out += ["### Image formats: size (bytes) and QEMU start to the app's first line (s)", "",
                "One kernel per app (UKL, efi build: command line built in), on q35; only the "
                "boot path differs.", "",
                "| app | " + " | ".join(f"{x} bytes" for x in fmts) + " | "
                + " | ".join(f"{x} s" for x in fmts) + " | disk/bzimage |",
                "|---|" + "---:|" * (2 * len(fmts) + 1)]
        for app, sizes in f["bytes"].items():
            boot = f["boot_to_first_line_s"]
            out.append(f"| {app} | " + " | ".join(str(sizes[x]) for x in fmts) + " | "
                       + " | ".join(str(boot[f"{app}-{x}"]) for x in fmts)
                       + f" | {boot[f'{app}-ratio_disk_over_bzimage']} |")
        out.append("")
    if "httpd_min_memory_mib" in r:
        out += ["### Smallest guest memory at which httpd boots and serves (MiB)", "",
                "| mode | MiB |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in r["httpd_min_memory_mib"].items()]
        out.append("")
    if "httpd" in r:
        h = r["httpd"]
        out += [f"### httpd, keep-alive, {h['connections']} connections, {h['duration_s']} s per "
                "sample", "",
                "| body | UKL req/s | shortcuts req/s | user req/s | UKL/user | shortcuts/user "
                "| p50/p99 ms UKL | shortcuts | user |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for body, row in h["bodies"].items():
            def lat(m: str, row: dict[str, Any] = row) -> str:
                return f"{row[f'{m}_p50_ms']} / {row[f'{m}_p99_ms']}" if f"{m}_p50_ms" in row else "n/a"
            out.append(f"| {body} | {row['ukl_req_per_s']} | {row.get('shortcuts_req_per_s', 'n/a')} "
                       f"| {row['user_req_per_s']} | {row['ratio_req_per_s_ukl_over_user']} | "
                       f"{row.get('ratio_req_per_s_shortcuts_over_user', 'n/a')} | {lat('ukl')} | "
                       f"{lat('shortcuts')} | {lat('user')} |")
        out.append("")
    if "redis" in r:
        out += _redis(r["redis"])
    if "build" in r:
        out += ["### Rebuilds (s)", "", "| what | s |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in r["build"].items()]
        out.append("")
    if "farm" in r:
        out += _farm(r["farm"])
    out += ["Builds used:", ""] + [f"    {c}" for c in report["commands"]] + [""]
    return "\n".join(out)


REDIS_LABELS = {"ukl": "UKL", "shortcuts": "UKL + shortcuts", "user": "user",
                "debian-cloud": "Debian cloud kernel"}


def _redis(x: dict[str, Any]) -> list[str]:
    names = [m for m in REDIS_LABELS if m in x["image_bytes"]]
    head = "| | " + " | ".join(REDIS_LABELS[m] for m in names) + " |"
    rule = "|---|" + "---:|" * len(names)
    out = [f"### Redis: redis-benchmark, {x['clients']} clients, {x['requests']} requests per "
           "test", "", head, rule]
    for p in (1, 16):
        row = x[f"pipeline_{p}"]
        for test in ("SET", "GET"):
            out.append(f"| {test} req/s, pipeline {p} | "
                       + " | ".join(str(row[f"{m}_{test}_rps"]) for m in names) + " |")
            out.append(f"| {test} p50 / p99 ms, pipeline {p} | "
                       + " | ".join(f"{row[f'{m}_{test}_p50_ms']} / {row[f'{m}_{test}_p99_ms']}"
                                    for m in names) + " |")
    out.append("| image bytes | " + " | ".join(str(x["image_bytes"][m]) for m in names) + " |")
    out.append("| QEMU start to ready (s) | "
               + " | ".join(str(x["boot_to_ready_s"][m]) for m in names) + " |")
    out.append("| smallest -m that answers PING (MiB) | "
               + " | ".join(str(x["min_memory_mib"][m]) for m in names) + " |")
    ratios = {k: v for p in (1, 16) for k, v in
              ((f"pipeline {p}: {k.replace('_ratio_rps_', ' ').replace('_over_', ' / ')}", v)
               for k, v in x[f"pipeline_{p}"].items() if "_ratio_" in k)}
    out += ["", "| req/s ratio | |", "|---|---:|"]
    out += [f"| {k} | {v} |" for k, v in ratios.items()]
    out += ["", f"Debian cloud kernel: {x.get('debian_cloud_kernel', 'n/a')}", ""]
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(render(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())


FARM_LABELS = {"cold": "cold (empty caches, fills the store)",
               "warm_remote": "fresh runner, warm remote store",
               "local_ccache": "warm local ccache, build dir evicted"}


def _farm(x: dict[str, Any]) -> list[str]:
    out = ["### Kernel build: cold vs remote store vs local ccache (hello, user mode)", "",
           "| build | whole build s | make s | make / cold | compiles | local hits | "
           "remote hits | misses |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, label in FARM_LABELS.items():
        row = x[name]
        ratio = "1" if name == "cold" else x[f"make_ratio_{name}_over_cold"]
        out.append(f"| {label} | {row['total_s']} | {row['make_s']} | {ratio} | "
                   f"{row['compiles']:.0f} | {row['local_hits']:.0f} | {row['remote_hits']:.0f} | "
                   f"{row['misses']:.0f} |")
    out += ["", f"Remote hit rate of the fresh runner: {x['remote_hit_rate']:.1%}.  The store held "
            f"{x['cold'].get('store_mib', '?')} MiB after the cold build; its kernel build "
            f"dir took {x['cold'].get('kbuild_dir_mib', '?')} MiB.", ""]
    return out
