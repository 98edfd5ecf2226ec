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
                "| call | UKL | user | UKL/user |", "|---|---:|---:|---:|"]
        for name, row in r["syscall"]["per_call"].items():
            out.append(f"| {name} | {row['ukl_ns']} | {row['user_ns']} | "
                       f"{row['ratio_ukl_over_user']} |")
        out.append("")
    if "boot_to_first_line_s" in r:
        b = r["boot_to_first_line_s"]
        out += ["### Boot: QEMU start to the app's first line (s)", "",
                "| UKL | user | Debian cloud kernel, same /init | UKL/user | UKL/cloud |",
                "|---:|---:|---:|---:|---:|",
                f"| {b['ukl']} | {b['user']} | {b.get('debian-cloud')} | "
                f"{b['ratio_ukl_over_user']} | {b.get('ratio_ukl_over_debian_cloud', 'n/a')} |", ""]
    if "bzimage_bytes" in r:
        out += ["### bzImage size (bytes)", "", "| image | bytes |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in r["bzimage_bytes"].items()]
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
                "| body | UKL req/s | user req/s | UKL/user | UKL p50/p99 ms | user p50/p99 ms |",
                "|---|---:|---:|---:|---:|---:|"]
        for body, row in h["bodies"].items():
            out.append(f"| {body} | {row['ukl_req_per_s']} | {row['user_req_per_s']} | "
                       f"{row['ratio_req_per_s_ukl_over_user']} | {row['ukl_p50_ms']} / "
                       f"{row['ukl_p99_ms']} | {row['user_p50_ms']} / {row['user_p99_ms']} |")
        out.append("")
    if "build" in r:
        out += ["### Rebuilds (s)", "", "| what | s |", "|---|---:|"]
        out += [f"| {k} | {v} |" for k, v in r["build"].items()]
        out.append("")
    out += ["Builds used:", ""] + [f"    {c}" for c in report["commands"]] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(render(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
