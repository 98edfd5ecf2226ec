"""example_apps/firewall: a packet filter on the kernel's IPv4 receive hook (kernel patch
0026), its rules in iptables-save's format compiled into C at build time (gen/fwc.py).

The generator's two evaluators (the rules as code, and a first-match scan of a table of
them: the baseline) are compiled and run on the host from the same generated C and must
agree with each other and with the rule file's meaning for random rule sets and packets
(hypothesis); malformed rule files are refused with their line numbers, by the generator
and through the build's generate step; and end to end, in ring 0, a connection the rules
allow is served through a forwarded port while one they deny is dropped and counted.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ukl_build.cache import Cache
from ukl_build.context import BuildContext
from ukl_build.errors import BuildError
from ukl_build.generate import generate
from ukl_build.progress import Reporter
from ukl_build.settings import load_settings

from conftest import EXAMPLES, Builds, booted

FIREWALL = EXAMPLES / "firewall"


def _load_fwc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fwc", FIREWALL / "gen" / "fwc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fwc"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fwc = _load_fwc()

# Reads IPv4 headers (hex, one per line), prints what each evaluator returns for them.
HARNESS = r"""
#include <stdio.h>
#include <string.h>
#include "fw_rules.h"

int main(void)
{
	char hex[256];
	unsigned char b[64];
	struct fw_pkt p;

	while (scanf("%255s", hex) == 1) {
		unsigned n = strlen(hex) / 2, i;

		for (i = 0; i < n && i < sizeof(b); i++)
			sscanf(hex + 2 * i, "%2hhx", &b[i]);
		if (!fw_parse(b, n, &p)) {
			puts("short");
			continue;
		}
		printf("%u %u\n", fw_compiled(FW_ARGS(&p)), fw_interpret(FW_ARGS(&p)));
	}
	return 0;
}
"""


def header(proto: int, src: int, dst: int, sport: int, dport: int, frag: int = 0,
           ihl: int = 5, size: int | None = None) -> bytes:
    """An IPv4 header (with options when ihl > 5) and the 4 bytes of ports after it."""
    h = bytearray(ihl * 4 + 4)
    h[0] = 0x40 | ihl
    h[6:8] = frag.to_bytes(2, "big")  # flags 0, fragment offset
    h[9] = proto
    h[12:16] = src.to_bytes(4, "big")
    h[16:20] = dst.to_bytes(4, "big")
    h[ihl * 4:ihl * 4 + 4] = sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return bytes(h[:size])


def fields(packet: bytes) -> tuple[int, int, int, int, int]:
    """What the rules see of a packet (fw_parse's meaning, written again)."""
    ihl = (packet[0] & 15) * 4
    proto, frag = packet[9], int.from_bytes(packet[6:8], "big") & 0x1FFF
    src, dst = int.from_bytes(packet[12:16], "big"), int.from_bytes(packet[16:20], "big")
    if proto in (6, 17) and frag == 0 and ihl >= 20 and len(packet) >= ihl + 4:
        ports = int.from_bytes(packet[ihl:ihl + 2], "big"), int.from_bytes(packet[ihl + 2:ihl + 4], "big")
    else:
        ports = fwc.NO_PORT, fwc.NO_PORT
    return proto, src, dst, *ports


def evaluate(rules_text: str, packets: list[bytes], work: Path) -> list[tuple[int, int]]:
    """(compiled, interpreted) rule index for each packet, from the generated C on the host."""
    work.mkdir(parents=True, exist_ok=True)
    h, c = fwc.generate(fwc.parse(rules_text), "test.rules")
    (work / "fw_rules.h").write_text(h)
    (work / "fw_rules.c").write_text(c)
    (work / "harness.c").write_text(HARNESS)
    exe = work / "harness"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-Wno-type-limits", "-o", exe,
                    work / "harness.c", work / "fw_rules.c"], check=True)
    out = subprocess.run([exe], input="".join(p.hex() + "\n" for p in packets), text=True,
                         capture_output=True, check=True).stdout.split("\n")
    return [(int(a), int(b)) for a, b in (line.split() for line in out if line)]


# --- the compiled and the interpreted filter agree -----------------------------------

ADDRS = [0x0A000201, 0x0A000202, 0x0A0002FF, 0xC0000201, 0xAC100001, 0x7F000001, 0]
PORTS = [0, 22, 53, 80, 443, 8080, 8081, 65535]


def _addr(a: int) -> str:
    return ".".join(str(a >> s & 255) for s in (24, 16, 8, 0))


@st.composite
def rule_line(draw: st.DrawFn) -> str:
    parts = ["-A INPUT"]
    proto = draw(st.sampled_from(["", "tcp", "udp", "icmp"]))
    for opt in ("-s", "-d"):
        if draw(st.booleans()):
            parts.append(f"{opt} {_addr(draw(st.sampled_from(ADDRS)))}/"
                         f"{draw(st.sampled_from([0, 8, 16, 24, 30, 31, 32]))}")
    if proto:
        parts.append(f"-p {proto}")
    if proto in ("tcp", "udp"):
        for opt in ("--sport", "--dport"):
            if draw(st.booleans()):
                lo = draw(st.sampled_from(PORTS))
                hi = draw(st.sampled_from([lo, lo, min(lo + 1, 65535), min(lo + 100, 65535)]))
                parts.append(f"{opt} {lo}" if lo == hi else f"{opt} {lo}:{hi}")
    parts.append(f"-j {draw(st.sampled_from(['ACCEPT', 'DROP']))}")
    return " ".join(parts)


@st.composite
def packet(draw: st.DrawFn) -> bytes:
    near = st.sampled_from(ADDRS).flatmap(lambda a: st.integers(0, 3).map(lambda d: (a + d) % 2**32))
    return header(draw(st.sampled_from([1, 6, 17, 47])), draw(near), draw(near),
                  draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS)),
                  frag=draw(st.sampled_from([0, 0, 0, 1, 0x2000])),
                  ihl=draw(st.sampled_from([5, 5, 6])),
                  size=draw(st.sampled_from([None, None, None, 21])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=st.lists(rule_line(), max_size=40), policy=st.sampled_from(["ACCEPT", "DROP"]),
       packets=st.lists(packet(), min_size=1, max_size=60))
def test_compiled_and_interpreted_filters_agree(rules: list[str], policy: str,
                                                 packets: list[bytes]) -> None:
    text = "\n".join(["*filter", f":INPUT {policy} [0:0]", *rules, "COMMIT"]) + "\n"
    rs = fwc.parse(text)
    with tempfile.TemporaryDirectory(prefix="fwc-") as tmp:
        got = evaluate(text, packets, Path(tmp))
    for p, (compiled, interpreted) in zip(packets, got, strict=True):
        want = rs.first_match(fields(p))
        assert compiled == interpreted == want, (p.hex(), text)


def test_many_rules_agree_on_many_packets(tmp_path: Path) -> None:
    """2,000 rules of the benchmark's kinds (deep trees, split rules, every group) and
    5,000 packets that hit them, miss them and fall between them."""
    rnd = random.Random(7)
    lines = ["*filter", ":INPUT DROP [0:0]"]
    for _ in range(2000):
        bits = rnd.choice([8, 16, 24, 28, 32])
        net = _addr(rnd.getrandbits(32) >> (32 - bits) << (32 - bits)) + f"/{bits}"
        lo = rnd.randint(1, 65000)
        ports = rnd.choice([f"{lo}", f"{lo}:{lo + rnd.randint(1, 500)}"])
        proto = rnd.choice(["tcp", "udp"])
        lines.append(rnd.choice([f"-A INPUT -s {net} -j DROP",
                                 f"-A INPUT -p {proto} --dport {ports} -j ACCEPT",
                                 f"-A INPUT -s {net} -p {proto} --sport {ports} -j ACCEPT",
                                 f"-A INPUT -d {net} -p icmp -j DROP"]))
    text = "\n".join(lines) + "\n"
    rs = fwc.parse(text)
    packets = [header(rnd.choice([1, 6, 17]), rnd.getrandbits(32), rnd.getrandbits(32),
                      rnd.randint(0, 65535), rnd.randint(0, 65535)) for _ in range(5000)]
    for r in rs.rules[:1000:3]:  # and packets at rules' edges
        (pl, _), (_, sh), (dl, dh), (spl, _), (dpl, dph) = r.ranges
        packets.append(header(6 if pl == 0 else pl, sh, dl, min(spl, 65535), min(dph, 65535)))
        packets.append(header(17, (sh + 1) % 2**32, dh, 1, min(dpl, 65535)))
    got = evaluate(text, packets, tmp_path)
    wrong = [(p.hex(), c, i, rs.first_match(fields(p))) for p, (c, i) in zip(packets, got, strict=True)
             if not c == i == rs.first_match(fields(p))]
    assert not wrong, wrong[:5]
    assert sum(i < len(rs.rules) for _, i in got) > 1000  # the packets did hit rules


# --- malformed rule files ----------------------------------------------------------

@pytest.mark.parametrize(("line", "message"), [
    ("-A INPUT -p tcp --dport 99999 -j ACCEPT", "'99999': ports are 0 to 65535"),
    ("-A INPUT -p tcp --dport 90:80 -j ACCEPT", "the range A:B with A <= B"),
    ("-A INPUT --dport 80 -j ACCEPT", "--sport and --dport need -p tcp or -p udp"),
    ("-A INPUT -p icmp --dport 80 -j ACCEPT", "--sport and --dport need -p tcp or -p udp"),
    ("-A INPUT -s 10.0.0.300 -j DROP", "'10.0.0.300' is not an IPv4 address or CIDR"),
    ("-A INPUT -s 10.0.0.0/33 -j DROP", "the prefix length is 0 to 32"),
    ("-A INPUT -p sctp -j DROP", "protocol 'sctp' (tcp, udp, icmp or all)"),
    ("-A INPUT -p tcp -j REJECT", "-j ACCEPT or -j DROP, not 'REJECT'"),
    ("-A INPUT -p tcp", "-j ACCEPT or -j DROP is missing"),
    ("-A INPUT ! -s 10.0.0.1 -j DROP", "negation ('!') is not supported"),
    ("-A INPUT -m state --state NEW -j ACCEPT", "-m state: only the match of the rule's protocol"),
    ("-A INPUT -i eth0 -j ACCEPT", "unsupported option '-i'"),
    ("-A INPUT -s 10.0.0.1 -s 10.0.0.2 -j DROP", "-s given twice"),
    ("-A OUTPUT -j DROP", "rules go to the INPUT chain (-A INPUT), not OUTPUT"),
    ("-A INPUT -p tcp --dport -j DROP", "--dport needs a value"),
    (":OUTPUT DROP [0:0]", "only the INPUT chain is filtered here (not OUTPUT DROP)"),
    (":INPUT REJECT [0:0]", "a policy line is ':CHAIN ACCEPT|DROP [packets:bytes]'"),
    ("*nat", "only the filter table is supported, not 'nat'"),
    ("-I INPUT -j DROP", "not a rule, a policy or a table line"),
])
def test_malformed_rules_are_refused_with_their_line(line: str, message: str) -> None:
    text = f"*filter\n:INPUT ACCEPT [0:0]\n# a comment\n{line}\nCOMMIT\n"
    with pytest.raises(fwc.RuleError) as e:
        fwc.parse(text, "input.rules")
    assert str(e.value).startswith("input.rules:4: ") and message in str(e.value)


def test_rules_after_commit_and_a_second_policy_are_refused() -> None:
    with pytest.raises(fwc.RuleError, match=r"^r:3: after COMMIT"):
        fwc.parse("*filter\nCOMMIT\n-A INPUT -j DROP\n", "r")
    with pytest.raises(fwc.RuleError, match=r"^r:2: a second policy for INPUT"):
        fwc.parse(":INPUT DROP\n:INPUT ACCEPT\n", "r")


def test_what_iptables_save_writes_is_read() -> None:
    rs = fwc.parse((FIREWALL / "rules" / "input.rules").read_text())
    assert not rs.policy_accept and len(rs.rules) == 6
    first = rs.rules[0]
    assert (first.ranges[0], first.ranges[4], first.accept) == ((6, 6), (8081, 8081), False)
    # host bits are ignored, as iptables does; long option names are the short ones
    (r,) = fwc.parse("-A INPUT --source 10.1.2.3/8 --protocol udp --destination-port 53: "
                     "--jump ACCEPT\n").rules
    assert r.ranges[1] == (0x0A000000, 0x0AFFFFFF) and r.ranges[4] == (53, 65535)


def test_a_bad_rule_file_stops_the_build_naming_the_generator_and_line(tmp_path: Path) -> None:
    project = tmp_path / "firewall"
    shutil.copytree(FIREWALL, project, ignore=shutil.ignore_patterns("build", "dist"))
    rules = project / "rules" / "input.rules"
    rules.write_text(rules.read_text().replace("--dport 9100", "--dport 91000"))
    s = load_settings(project)
    with Reporter(tmp_path / "log") as r, pytest.raises(BuildError) as e:
        generate(s, tmp_path / "build", BuildContext(Cache(tmp_path / "cache"), r, {}))
    assert "[tool.ukl-build.generate.rules] (generate)" in str(e.value)
    assert "rules/input.rules:9: '91000': ports are 0 to 65535" in str(e.value)
    assert not (tmp_path / "build" / "generated" / "rules").exists()


# --- the nftables baseline ----------------------------------------------------------

LOADER = r"""
#include <stdio.h>
int fw_load_nftables(char *why, unsigned long size);
int main(void)
{
	char why[200] = "";

	if (fw_load_nftables(why, sizeof(why))) {
		puts(why);
		return 1;
	}
	return 0;
}
"""

# Each rule as nft (Debian 12's, 1.0.6) prints what the loader sent for it.
AS_NFT = [
    ("-A INPUT -p tcp -m tcp --dport 8081 -j DROP", "tcp dport 8081 drop"),
    ("-A INPUT -s 10.0.2.0/24 -p tcp -m tcp --dport 8080:8081 -j ACCEPT",
     "ip saddr 10.0.2.0/24 tcp dport 8080-8081 accept"),
    ("-A INPUT -p icmp -j ACCEPT", "ip protocol icmp accept"),
    ("-A INPUT -s 10.1.0.0/23 -d 10.0.2.15 -j DROP", "ip saddr 10.1.0.0/23 ip daddr 10.0.2.15 drop"),
    ("-A INPUT -p udp --sport 1000:2000 --dport 53 -j ACCEPT",
     "udp sport 1000-2000 udp dport 53 accept"),
    ("-A INPUT -p tcp -j ACCEPT", "ip protocol tcp accept"),
    ("-A INPUT -s 0.0.0.0/0 -j DROP", "drop"),
]


def test_the_nftables_baseline_loads_the_same_rules(tmp_path: Path) -> None:
    """The benchmark's third engine sends the rules to nf_tables itself (netlink, no nft
    in the image): loaded here in a network namespace of its own on the host's kernel,
    nft reads back each rule as the rule file means it, with the file's policy."""
    text = "\n".join(["*filter", ":INPUT DROP [0:0]", *(r for r, _ in AS_NFT), "COMMIT"]) + "\n"
    h, c = fwc.generate(fwc.parse(text), "test.rules")
    (tmp_path / "fw_rules.h").write_text(h)
    (tmp_path / "fw_rules.c").write_text(c)
    (tmp_path / "loader.c").write_text(LOADER)
    exe = tmp_path / "loader"
    subprocess.run(["gcc", "-O1", "-Wall", "-Werror", "-I", tmp_path, "-o", exe,
                    tmp_path / "loader.c", tmp_path / "fw_rules.c",
                    FIREWALL / "src" / "nftables.c"], check=True)
    nft = shutil.which("nft") or "/usr/sbin/nft"
    out = subprocess.run(["unshare", "--net", "sh", "-c", f"{exe} && {nft} list ruleset"],
                         capture_output=True, text=True, check=True).stdout
    lines = [" ".join(line.replace("counter packets 0 bytes 0 ", "").split())
             for line in out.splitlines()]
    assert "type filter hook prerouting priority raw; policy drop;" in lines
    rules = lines[lines.index("type filter hook prerouting priority raw; policy drop;") + 1:]
    assert rules[:len(AS_NFT)] == [want for _, want in AS_NFT]


# --- end to end, in ring 0 ---------------------------------------------------------

def _exchange(port: int, data: bytes = b"", wait: float = 5.0) -> bytes:
    """What the guest sends back before it closes, or what came before ``wait`` ran out."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        if data:
            s.sendall(data)
        try:
            while chunk := s.recv(4096):
                got += chunk
        except TimeoutError:
            pass
    return got


def counters(port: int) -> dict[int, tuple[int, str]]:
    """Rule line (0: the policy) -> (packets, verdict) from the counters port."""
    text = _exchange(port).decode()
    rows = [line.split(" ", 3) for line in text.splitlines()[1:]]
    return {int(r[0]): (int(r[1]), r[2]) for r in rows}


@pytest.mark.kernel
def test_allowed_connections_pass_and_denied_ones_are_dropped(builds: Builds) -> None:
    result = builds("firewall", "ukl")
    with booted(result.images.directory, forward=[8080, 8081, 9100], timeout=300) as vm:
        vm.wait_for(r"firewall: 6 rules compiled into the receive path, policy DROP",
                    timeout=240)
        vm.wait_for(r"firewall: listening on ports 8080, 8081 and 9100")
        deadline = time.monotonic() + 60
        while True:  # the forward opens once the guest listens (kernel patch 0020)
            try:
                if _exchange(vm.port(8080)) == b"hello from port 8080\n":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "8080 never answered through its forward"
            time.sleep(0.5)
        before = counters(vm.port(9100))
        assert before[7] == (0, "DROP") and before[0][1] == "DROP"
        # denied: the host's connection to the forward opens, but the guest never sees
        # more than the SYNs of QEMU's side of it, which the rule on line 7 drops
        t0 = time.monotonic()
        assert _exchange(vm.port(8081), b"hi\n", wait=3.0) == b""
        assert time.monotonic() - t0 >= 2.5
        assert _exchange(vm.port(8080)) == b"hello from port 8080\n"  # still served
        after = counters(vm.port(9100))
        assert after[7][0] >= 1, after
        assert after[8][0] > before[8][0]  # the allowed connection, counted on its rule
