"""Instructions per packet of example_apps/firewall's filter: its rules compiled into code
against the same rules scanned one after the other, and against the same rules loaded
into the kernel's own nf_tables (issue 26).

For each rule count (10, 100, 1,000, 10,000 by default) a rule set is made (seeded, so
every run filters the same rules): rule 0 drops UDP to port 7000, the last rule UDP to
port 7001, the policy drops the rest, rule 1 lets TCP to the app's counters port in, and
the rules between are source blocks, ports and both (none of which the packets below
match).  The app is built three times on one kernel
configuration (the examples' plus CONFIG_NET_PKTGEN, CONFIG_PROC_FS and nf_tables):
compiled, with ``-C cflags=-DFW_INTERPRET``, and with ``-C cflags=-DFW_NFTABLES`` (the
app registers no filter and loads the rules into nf_tables through netlink, as nft
would: src/nftables.c).  Each build boots once under the counting plugin
(benchmarks/costcount), one vCPU, and the app has pktgen inject UDP packets from
10.9.0.1 into the receive path (``netif_receive`` mode: no host, no NIC, no wall clock in
the count).  Every class of packet is counted in two windows, COUNT and 2 x COUNT
packets, and the difference of the two divided by COUNT is the cost of one packet: what
one injection costs besides its packets (the request to the app, pktgen's set-up) cancels
out.  The classes: "mix" (ports 7000, 7001, 7002 in turn: the first rule, the last
rule, no rule), and each of those alone.  The app's counters must have moved by exactly
what was sent, on the right rules (nf_tables keeps its own).

"filter" is the app's code (the hook's function and the rules; the app's other code does
not run while packets are injected), or for nf_tables its chain walk and expressions
(NFT_FUNCTIONS), "total" every instruction but the idle loop's: the
receive path from pktgen through netfilter's hook to the drop.  Beside them, the time
per packet of the larger window by the guest's clock as pktgen reports it (under TCG
and the counting plugin: a figure of the emulation, not of a CPU).
"""

from __future__ import annotations

import io
import json
import random
import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import cost
from benchmarks.harness import REPO, Context, free_port
from ukl_build.pipeline import BuildResult, build

APP = REPO / "example_apps" / "firewall"
COUNTS = (10, 100, 1000, 10000)
ENGINES = {"compiled": {}, "interpreted": {"cflags": "-DFW_INTERPRET"},
           "nftables": {"cflags": "-DFW_NFTABLES"}}
# pktgen and /proc for the load; nf_tables for the third engine (in every engine's kernel:
# one configuration, and nf_tables costs nothing where no table is loaded).
KERNEL = {"kconfig.NET_PKTGEN": "y", "kconfig.PROC_FS": "y", "kconfig.NF_TABLES": "y",
          "kconfig.NF_TABLES_IPV4": "y"}
# nf_tables' own code on a packet's path (its chain walk and the expressions the rules
# use), counted as one region, "nftables": the counterpart of the app's filter.
NFT_FUNCTIONS = ("nft_do_chain", "nft_do_chain_ipv4", "nft_payload_eval", "nft_cmp_eval",
                 "nft_meta_get_eval", "nft_counter_eval", "nft_bitwise_eval",
                 "nft_immediate_eval", "nft_range_eval", "nft_update_chain_stats",
                 "nft_counter_do_eval", "nft_trace_packet")
CLASSES = {"mix": (7000, 3), "first": (7000, 1), "last": (7001, 1), "none": (7002, 1)}
STATS_PORT = 9100
CONTROL = 1  # the rule that lets the benchmark talk to the app (its counters move too)


def rule_set(n: int, seed: int = 26) -> str:
    """``n`` rules in iptables-save's format: the first and the last match the benchmark's
    packets (UDP to 7000 and to 7001, from 10.9.0.1), the ones between never do; the
    second lets the benchmark in (TCP to the app's counters port)."""
    rnd = random.Random(seed)
    lines = ["*filter", ":INPUT DROP [0:0]", "-A INPUT -p udp -m udp --dport 7000 -j DROP",
             f"-A INPUT -p tcp -m tcp --dport {STATS_PORT} -j ACCEPT"]  # CONTROL: the app's port
    for _ in range(max(n - 3, 0)):
        kind = rnd.random()
        if kind < 0.4:  # a source block (172.16.0.0/12: never 10.9.0.1)
            lines.append(f"-A INPUT -s {_block(rnd, rnd.randint(16, 32))} -j "
                         + rnd.choice(["ACCEPT", "DROP"]))
        elif kind < 0.8:  # a port or a range of them, far from 7000-7002
            proto, lo = rnd.choice(["tcp", "udp"]), rnd.randint(10000, 60000)
            hi = lo + rnd.choice([0, 0, 0, 10, 100])
            ports = f"{lo}" if hi == lo else f"{lo}:{hi}"
            lines.append(f"-A INPUT -p {proto} -m {proto} --dport {ports} -j "
                         + rnd.choice(["ACCEPT", "DROP"]))
        else:  # both
            lines.append(f"-A INPUT -s {_block(rnd, rnd.randint(8, 24))} -p tcp -m tcp "
                         f"--dport {rnd.randint(1, 9999)} -j ACCEPT")
    if n > 1:
        lines.append("-A INPUT -p udp -m udp --dport 7001 -j DROP")
    return "\n".join([*lines, "COMMIT"]) + "\n"


def _block(rnd: random.Random, bits: int) -> str:
    """A CIDR block of ``bits`` inside 172.0.0.0/8 (never the packets' 10.9.0.1)."""
    addr = (172 << 24) | (16 << 16) | rnd.getrandbits(16)
    addr &= (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
    return ".".join(str(addr >> s & 255) for s in (24, 16, 8, 0)) + f"/{bits}"


def build_variant(ctx: Context, n: int, engine: str) -> BuildResult:
    project = ctx.work / f"firewall-{n}-{engine}"
    shutil.copytree(APP, project, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("build", "dist"))
    (project / "rules" / "input.rules").write_text(rule_set(n))
    cs = {**KERNEL, **ENGINES[engine]}
    ctx.note("python -m ukl_build build example_apps/firewall "
             + " ".join(f"-C {k}={v}" for k, v in cs.items())
             + f"  (rules/input.rules: benchmarks.firewall.rule_set({n}))")
    return build(project, cs, cache=ctx.cache, stream=io.StringIO())


def _ask(port: int, line: str = "", timeout: float = 600) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if line:
            s.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def hits(port: int) -> list[int]:
    """The app's counters: packets per rule, in rule order, the policy's last."""
    return [int(line.split(" ", 2)[1]) for line in _ask(port).splitlines()[1:]]


def expected(n: int, cls: str, count: int) -> dict[int, int]:
    """Which counters a window of ``count`` packets of class ``cls`` must move, by how much."""
    first, last, policy = 0, max(n - 1, 0), n
    if cls == "mix":
        return {first: count // 3, last: count // 3, policy: count // 3}
    return {{"first": first, "last": last, "none": policy}[cls]: count}


def measure(result: BuildResult, n: int, engine: str, count: int, work: Path
            ) -> dict[str, Any]:
    """One boot under the counting plugin; per class, per packet: the filter's
    instructions (nf_tables' for that engine), the total (without the idle loop), and
    the time by the guest's clock."""
    present = {name for name, _, _ in cost.text_symbols(result.kernel.vmlinux)}
    nft = [f for f in NFT_FUNCTIONS if f in present]
    ranges = [("nftables" if name in nft else name, lo, hi)
              for name, lo, hi in cost.address_ranges(result.kernel.vmlinux, nft)]
    port = free_port()
    with cost.counted_vm(result.images.directory, ranges, f"{port}:{STATS_PORT}", work,
                         timeout=3600) as vm:
        cost.until([sys.executable, "-c", f"import socket; socket.create_connection("
                    f"('127.0.0.1', {port}), timeout=5).recv(1) or exit(1)"], 300)
        return {cls: _class(Window(vm, port, n, engine), cls, f"{first_port} {span}", count)
                for cls, (first_port, span) in CLASSES.items()}


@dataclass(frozen=True)
class Window:
    """What a counted window needs: the counted VM, the app's port, the rule count and
    the engine."""
    vm: cost.CountedVM
    port: int
    n: int
    engine: str


def _class(w: Window, cls: str, ports: str, count: int) -> dict[str, float]:
    """Windows of ``count`` and 2 x ``count`` packets; their difference per packet."""
    windows = []
    port, n = w.port, w.n
    for k in (count, 2 * count):
        before_hits = hits(port)
        before = w.vm.snapshot(f"{cls}-{k}-before")
        answer = _ask(port, f"inject {k} {ports}")
        after = w.vm.snapshot(f"{cls}-{k}-after")
        said = re.fullmatch(rf"injected {k} in (\d+) us\n", answer)
        if not said:
            raise RuntimeError(f"the firewall app, asked to inject {k} {ports}: {answer!r}")
        seconds = int(said.group(1)) / 1e6  # pktgen's own time: first packet to last
        moved = {i: a - b for i, (a, b) in enumerate(zip(hits(port), before_hits, strict=True))
                 if a != b and i != CONTROL}
        # nf_tables judges the packets itself: the app's counters do not see them
        if moved != (expected(n, cls, k) if w.engine != "nftables" else {}):
            raise RuntimeError(f"{n} rules, {cls} x {k}: counters moved {moved}, "
                               f"expected {expected(n, cls, k)}")
        windows.append((cost.per_request(before, after, 1), seconds))
    (small, _), (large, t_large) = windows

    def per_packet(region: str) -> float:
        return round((large.get(region, {}).get("instructions", 0.0)
                      - small.get(region, {}).get("instructions", 0.0)) / count, 1)

    return {"filter": per_packet("nftables" if w.engine == "nftables" else "app"),
            "total": per_packet("total"),
            "guest_ns": round(t_large / (2 * count) * 1e9)}


def firewall(ctx: Context, counts: tuple[int, ...] = COUNTS, packets: int = 3000) -> None:
    """The per-packet table: for each rule count, each engine, each class of packet."""
    packets -= packets % 3  # the mix is exact thirds
    table: dict[str, Any] = {}
    for n in counts:
        row: dict[str, Any] = {}
        for engine in ENGINES:
            result = build_variant(ctx, n, engine)
            work = ctx.work / f"firewall-{n}-{engine}-count"  # its vm.log stays
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            row[engine] = measure(result, n, engine, packets, work)
            print(f"[bench] firewall {n} rules {engine}: {json.dumps(row[engine])}",
                  file=sys.stderr, flush=True)
        for other in ("interpreted", "nftables"):
            row[f"{other}_over_compiled_filter_mix"] = round(
                row[other]["mix"]["filter"] / row["compiled"]["mix"]["filter"], 1)
            row[f"{other}_over_compiled_total_mix"] = round(
                row[other]["mix"]["total"] / row["compiled"]["mix"]["total"], 2)
        table[str(n)] = row
    base = table[str(counts[0])]["compiled"]["mix"]["filter"]
    for n in counts:
        table[str(n)]["compiled_filter_mix_over_fewest_rules"] = round(
            table[str(n)]["compiled"]["mix"]["filter"] / base, 2)
    ctx.note(f"(per class: inject {packets} and {2 * packets} UDP packets with pktgen, "
             "netif_receive mode; per packet = the difference / "
             f"{packets}; counting plugin, one vCPU, nokaslr)")
    ctx.results["firewall"] = {"packets": packets, "rules": table,
                               "command": shlex.join(["python", "-m", "benchmarks",
                                                      "firewall"])}
