"""Compile an iptables-save rule file into C: the firewall's generator.

    python gen/fwc.py RULES OUT_DIR

writes ``fw_rules.h`` and ``fw_rules.c`` into OUT_DIR.  The rule file is the
subset of ``iptables-save`` output a stateless IPv4 input filter needs::

    *filter
    :INPUT DROP [0:0]
    -A INPUT -s 10.0.2.0/24 -p tcp -m tcp --dport 8080 -j ACCEPT
    -A INPUT -p udp --sport 53 -j ACCEPT
    -A INPUT -p icmp -j ACCEPT
    COMMIT

``-A INPUT`` rules with ``-s``/``-d`` (an address or a CIDR), ``-p tcp|udp|icmp``
(``-m`` of the same protocol allowed, as iptables-save writes it), ``--sport``/
``--dport`` (a port or a range ``A:B``; with ``-p tcp`` or ``-p udp``), ``-j
ACCEPT|DROP``; a policy line for INPUT (ACCEPT when there is none; FORWARD
and OUTPUT may appear with ACCEPT, which is what they are here).  Anything
else is refused with its line number.

First match wins, as in iptables.  The C file has both evaluators, over the
same rules: ``fw_compiled()``, the rules as code (see ``Compiler``), and
``fw_interpret()``, a first-match linear scan of a rule table (the baseline).
Each returns the index of the matching rule, or the rule count for the policy.
"""

from __future__ import annotations

import bisect
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NO_PORT = 65536  # a packet's port when it has none: not TCP/UDP, or a later fragment
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
DIMS = ("proto", "src", "dst", "sport", "dport")
FULL = ((0, 255), (0, 2**32 - 1), (0, 2**32 - 1), (0, NO_PORT), (0, NO_PORT))
LEAF_RULES = 3  # at most this many rules are tested one after the other in a leaf
MAX_TESTS_PER_RULE = 64  # past this many emitted tests per rule, leaves stop splitting

Range = tuple[int, int]


class RuleError(Exception):
    """A line the rule file may not have: its path, line number and why."""


@dataclass(frozen=True)
class Rule:
    ranges: tuple[Range, Range, Range, Range, Range]  # DIMS, inclusive
    accept: bool
    line: int
    text: str

    def matches(self, packet: Sequence[int]) -> bool:
        return all(lo <= v <= hi for v, (lo, hi) in zip(packet, self.ranges, strict=True))


@dataclass
class RuleSet:
    rules: list[Rule] = field(default_factory=list)
    policy_accept: bool = True

    def first_match(self, packet: Sequence[int]) -> int:
        """The reference semantics: the index of the first rule that matches, else the
        number of rules (the policy)."""
        return next((i for i, r in enumerate(self.rules) if r.matches(packet)), len(self.rules))


# --- parsing -------------------------------------------------------------------------

def parse(text: str, path: str = "rules") -> RuleSet:
    rs, policy_seen, committed = RuleSet(), False, False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{path}:{number}"
        if not line or line.startswith("#"):
            continue
        if committed:
            raise RuleError(f"{where}: after COMMIT (one *filter table per file)")
        if line.startswith("*"):
            if line != "*filter":
                raise RuleError(f"{where}: only the filter table is supported, not {line[1:]!r}")
        elif line == "COMMIT":
            committed = True
        elif line.startswith(":"):
            chain, accept = _policy(line, where)
            if chain == "INPUT":
                if policy_seen:
                    raise RuleError(f"{where}: a second policy for INPUT")
                rs.policy_accept, policy_seen = accept, True
        elif line.startswith("-A "):
            rs.rules.append(_rule(line, number, where))
        else:
            raise RuleError(f"{where}: not a rule, a policy or a table line: {line!r}")
    return rs


def _policy(line: str, where: str) -> tuple[str, bool]:
    parts = line[1:].split()
    if len(parts) not in (2, 3) or parts[1] not in ("ACCEPT", "DROP", "-"):
        raise RuleError(f"{where}: a policy line is ':CHAIN ACCEPT|DROP [packets:bytes]'")
    chain, target = parts[0], parts[1]
    if chain == "INPUT" and target != "-":
        return chain, target == "ACCEPT"
    if chain in ("FORWARD", "OUTPUT") and target == "ACCEPT":
        return chain, True  # what those chains are in a VM that only receives
    raise RuleError(f"{where}: only the INPUT chain is filtered here (not {chain} {target})")


_LONG = {"--source": "-s", "--destination": "-d", "--protocol": "-p", "--jump": "-j",
         "--match": "-m", "--source-port": "--sport", "--destination-port": "--dport"}


def _rule(line: str, number: int, where: str) -> Rule:
    words = line.split()
    if len(words) < 2 or words[1] != "INPUT":
        raise RuleError(f"{where}: rules go to the INPUT chain (-A INPUT), "
                        f"not {words[1] if len(words) > 1 else 'nothing'}")
    opts: dict[str, str] = {}
    matches: list[str] = []
    it = iter(words[2:])
    for word in it:
        opt = _LONG.get(word, word)
        if opt == "!":
            raise RuleError(f"{where}: negation ('!') is not supported")
        if opt not in ("-s", "-d", "-p", "-j", "-m", "--sport", "--dport"):
            raise RuleError(f"{where}: unsupported option {word!r}")
        value = next(it, None)
        if value is None or value.startswith("-"):
            raise RuleError(f"{where}: {word} needs a value")
        if opt == "-m":
            if value not in PROTOS:  # -m state, -m multiport, ...: a match of its own
                raise RuleError(f"{where}: -m {value}: only the match of the rule's protocol "
                                "(-m tcp, -m udp, -m icmp) is supported")
            matches.append(value)
            continue
        if opt in opts:
            raise RuleError(f"{where}: {word} given twice")
        opts[opt] = value
    proto = opts.get("-p", "all")
    if proto not in (*PROTOS, "all"):
        raise RuleError(f"{where}: protocol {proto!r} (tcp, udp, icmp or all)")
    for m in matches:
        if m != proto:
            raise RuleError(f"{where}: -m {m}: only the match of the rule's protocol "
                            f"(-p {proto}) is supported")
    if ("--sport" in opts or "--dport" in opts) and proto not in ("tcp", "udp"):
        raise RuleError(f"{where}: --sport and --dport need -p tcp or -p udp")
    target = opts.get("-j")
    if target not in ("ACCEPT", "DROP"):
        raise RuleError(f"{where}: -j ACCEPT or -j DROP" + (f", not {target!r}" if target else
                                                              " is missing"))
    ranges = ((PROTOS[proto],) * 2 if proto in PROTOS else FULL[0],
              _cidr(opts["-s"], where) if "-s" in opts else FULL[1],
              _cidr(opts["-d"], where) if "-d" in opts else FULL[2],
              _ports(opts["--sport"], where) if "--sport" in opts else FULL[3],
              _ports(opts["--dport"], where) if "--dport" in opts else FULL[4])
    return Rule(ranges, target == "ACCEPT", number, line)


def _cidr(text: str, where: str) -> Range:
    addr, _, bits = text.partition("/")
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise RuleError(f"{where}: {text!r} is not an IPv4 address or CIDR")
    if bits and not (bits.isdigit() and int(bits) <= 32):
        raise RuleError(f"{where}: {text!r}: the prefix length is 0 to 32")
    n = int(bits) if bits else 32
    value = int.from_bytes(bytes(int(p) for p in parts), "big")
    size = 1 << (32 - n)
    lo = value & ~(size - 1)  # iptables ignores the host bits too
    return lo, lo + size - 1


def _ports(text: str, where: str) -> Range:
    lo_s, sep, hi_s = text.partition(":")
    try:
        lo = int(lo_s) if lo_s else 0
        hi = int(hi_s) if hi_s else 65535 if sep else lo
    except ValueError:
        raise RuleError(f"{where}: {text!r} is not a port or a range A:B") from None
    if not (0 <= lo <= hi <= 65535):
        raise RuleError(f"{where}: {text!r}: ports are 0 to 65535, the range A:B with A <= B")
    return lo, hi


# --- the rules as code ---------------------------------------------------------------

class Compiler:
    """First match as a few comparisons, whatever the number of rules.

    Rules are grouped by the fields they test (e.g. every ``-s``-only rule in one
    group, every ``-p tcp --dport`` rule in another): within a group no rule is a
    wildcard in a field the others split on, so a decision tree over the group's
    fields does not copy rules into both halves of a split the way one tree over
    all rules would (a port rule is in every half of a split on source addresses).
    Each group's tree splits its region at the boundary that best balances the
    rules on both sides (HyperSplit), drops the rules that an earlier rule covering
    the whole region hides, and ends in leaves that test at most LEAF_RULES rules,
    and only the fields those rules do not already cover.  A packet goes through the
    groups in the order of their first rules and skips a group whose first rule
    comes after the best match so far, so early rules cost little.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = rules
        self.budget = MAX_TESTS_PER_RULE * max(len(rules), 16)
        self.lines: list[str] = []

    def groups(self) -> list[tuple[tuple[int, ...], list[int]]]:
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(self.rules):
            shape = tuple(d for d in range(len(DIMS)) if r.ranges[d] != FULL[d])
            by_shape.setdefault(shape, []).append(i)
        return sorted(by_shape.items(), key=lambda kv: kv[1][0])

    def emit(self) -> str:
        out: list[str] = []
        groups = self.groups()
        for g, (shape, members) in enumerate(groups):
            self.lines = [f"/* group {g}: rules testing {', '.join(DIMS[d] for d in shape) or 'nothing'}"
                          f" ({len(members)} rules, the first at index {members[0]}) */",
                          f"static unsigned fw_group{g}(FW_FIELDS, unsigned best __attribute__((unused)))",
                          "{"]
            self._node(members, list(FULL), shape, 1)
            self.lines.append("}")
            out += [*self.lines, ""]
        out += ["unsigned fw_compiled(FW_FIELDS)", "{",
                f"\tunsigned best = {len(self.rules)};", ""]
        for g, (_, members) in enumerate(groups):
            out += [f"\tif (best > {members[0]}u) {{",
                    f"\t\tunsigned i = fw_group{g}(proto, src, dst, sport, dport, best);",
                    "",
                    "\t\tif (i < best)", "\t\t\tbest = i;", "\t}"]
        out += ["\treturn best;", "}", ""]
        return "\n".join(out)

    def _say(self, depth: int, text: str) -> None:
        self.lines.append("\t" * depth + text)

    def _covers(self, i: int, region: list[Range], dims: Sequence[int]) -> bool:
        r = self.rules[i].ranges
        return all(r[d][0] <= region[d][0] and region[d][1] <= r[d][1] for d in dims)

    def _node(self, members: list[int], region: list[Range], dims: Sequence[int],
              depth: int) -> None:
        for k, i in enumerate(members):  # nothing after a rule that covers the region
            if self._covers(i, region, dims):
                members = members[:k + 1]
                break
        split = None
        if len(members) > LEAF_RULES and self.budget > 0:
            split = self._split(members, region, dims)
        if split is None:
            self._leaf(members, region, dims, depth)
            return
        d, point = split
        self.budget -= 1
        lo, hi = region[d]
        left = [i for i in members if self.rules[i].ranges[d][0] < point]
        right = [i for i in members if self.rules[i].ranges[d][1] >= point]
        self._say(depth, f"if ({DIMS[d]} < {point}u) {{")
        self._node(left, [*region[:d], (lo, point - 1), *region[d + 1:]], dims, depth + 1)
        self._say(depth, "} else {")
        self._node(right, [*region[:d], (point, hi), *region[d + 1:]], dims, depth + 1)
        self._say(depth, "}")

    def _split(self, members: list[int], region: list[Range],
               dims: Sequence[int]) -> tuple[int, int] | None:
        """The field and point (left: below it) that leave the fewest rules on the
        larger side, or None when no split leaves fewer than all of them on a side."""
        best: tuple[int, int, int, int] | None = None  # (larger side, sum, dim, point)
        n = len(members)
        for d in dims:
            lo, hi = region[d]
            starts = sorted(self.rules[i].ranges[d][0] for i in members)
            ends = sorted(self.rules[i].ranges[d][1] for i in members)
            points = sorted({s for s in starts if s > lo} | {e + 1 for e in ends if e < hi})
            for point in _around_median(points):
                left = bisect.bisect_left(starts, point)  # rules starting below the point
                right = n - bisect.bisect_left(ends, point)  # rules ending at it or later
                cand = (max(left, right), left + right, d, point)
                if best is None or cand < best:
                    best = cand
        if best is None or best[0] >= n:
            return None
        return best[2], best[3]

    def _leaf(self, members: list[int], region: list[Range], dims: Sequence[int],
              depth: int) -> None:
        for i in members:
            r = self.rules[i].ranges
            tests = [_range_test(DIMS[d], r[d], region[d]) for d in dims]
            tests = [t for t in tests if t]
            self.budget -= len(tests)
            if not tests:
                self._say(depth, f"return {i}; /* line {self.rules[i].line} */")
                return
            self._say(depth, f"if ({' && '.join(tests)})")
            self._say(depth + 1, f"return {i}; /* line {self.rules[i].line} */")
        self._say(depth, "return best;")


def _around_median(points: list[int], span: int = 8) -> Iterator[int]:
    """Candidate split points: the median boundary and its neighbours (balanced
    splits are near the middle; trying every boundary would be quadratic)."""
    mid = len(points) // 2
    yield from points[max(0, mid - span):mid + span + 1]


def _range_test(name: str, want: Range, region: Range) -> str:
    lo, hi = want
    if lo <= region[0] and region[1] <= hi:
        return ""
    if lo == hi:
        return f"{name} == {lo}u"
    if lo <= region[0]:
        return f"{name} <= {hi}u"
    if region[1] <= hi:
        return f"{name} >= {lo}u"
    return f"{name} - {lo}u <= {hi - lo}u"


# --- output --------------------------------------------------------------------------

HEADER = """\
/* Generated by gen/fwc.py from {source}: do not edit. */
#ifndef FW_RULES_H
#define FW_RULES_H

#define FW_RULES {n}u
#define FW_NO_PORT {no_port}u

/* What a rule can test, from the IPv4 header and the ports after it. */
struct fw_pkt {{
	unsigned proto, src, dst, sport, dport;
}};

/* One rule as the interpreter reads it: each field's range as low end and span. */
struct fw_rule {{
	unsigned proto_lo, proto_span, src_lo, src_span, dst_lo, dst_span;
	unsigned sport_lo, sport_span, dport_lo, dport_span;
}};

extern const unsigned char fw_verdict[FW_RULES + 1]; /* 1: accept, 0: drop; [FW_RULES]: policy */
extern const unsigned fw_line[FW_RULES + 1]; /* the rule's line in the rule file; 0: policy */
extern const char *const fw_text[FW_RULES + 1];
extern const struct fw_rule fw_table[]; /* the interpreter's table, FW_RULES rules */
/* Both evaluators take the fields as arguments (in registers, nothing on the stack)
 * and return the index of the first rule that matches, FW_RULES for none. */
#define FW_FIELDS unsigned proto __attribute__((unused)), unsigned src __attribute__((unused)), \
	unsigned dst __attribute__((unused)), unsigned sport __attribute__((unused)), \
	unsigned dport __attribute__((unused))
#define FW_ARGS(p) (p)->proto, (p)->src, (p)->dst, (p)->sport, (p)->dport
unsigned fw_compiled(FW_FIELDS);
unsigned fw_interpret(FW_FIELDS);

/* The fields of the packet at iph (len bytes of it); 0 if it is too short to be IPv4. */
static inline int fw_parse(const unsigned char *iph, unsigned len, struct fw_pkt *p)
{{
	unsigned ihl, frag;

	if (len < 20)
		return 0;
	ihl = (iph[0] & 15u) * 4;
	frag = ((iph[6] & 0x1fu) << 8) | iph[7];
	p->proto = iph[9];
	p->src = (unsigned)iph[12] << 24 | iph[13] << 16 | iph[14] << 8 | iph[15];
	p->dst = (unsigned)iph[16] << 24 | iph[17] << 16 | iph[18] << 8 | iph[19];
	if ((p->proto == 6 || p->proto == 17) && frag == 0 && ihl >= 20 && len >= ihl + 4) {{
		p->sport = iph[ihl] << 8 | iph[ihl + 1];
		p->dport = iph[ihl + 2] << 8 | iph[ihl + 3];
	}} else {{
		p->sport = p->dport = FW_NO_PORT;
	}}
	return 1;
}}

#endif
"""

# The filter runs in softirq context (kernel patch 0026): no vector registers there,
# they may hold the app's own state.  Both evaluators are compiled without them.
PROLOGUE = """\
/* Generated by gen/fwc.py from {source}: do not edit. */
#pragma GCC target("general-regs-only")
#include "fw_rules.h"

"""

INTERPRETER = """\
/* The baseline: every rule in order until one matches. */
unsigned fw_interpret(FW_FIELDS)
{
	const struct fw_rule *r = fw_table;
	unsigned i;

	for (i = 0; i < FW_RULES; i++, r++) {
		if (proto - r->proto_lo <= r->proto_span &&
			src - r->src_lo <= r->src_span &&
			dst - r->dst_lo <= r->dst_span &&
			sport - r->sport_lo <= r->sport_span &&
			dport - r->dport_lo <= r->dport_span)
			return i;
	}
	return FW_RULES;
}
"""


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate(rs: RuleSet, source: str) -> tuple[str, str]:
    n = len(rs.rules)
    header = HEADER.format(source=source, n=n, no_port=NO_PORT)
    verdicts = [int(r.accept) for r in rs.rules] + [int(rs.policy_accept)]
    lines = [r.line for r in rs.rules] + [0]
    policy = f"policy {'ACCEPT' if rs.policy_accept else 'DROP'}"
    texts = [r.text for r in rs.rules] + [policy]
    table = [", ".join(f"{lo}u, {hi - lo}u" for lo, hi in r.ranges) for r in rs.rules]
    body = [PROLOGUE.format(source=source),
            f"const unsigned char fw_verdict[FW_RULES + 1] = {{{', '.join(map(str, verdicts))}}};",
            f"const unsigned fw_line[FW_RULES + 1] = {{{', '.join(map(str, lines))}}};",
            "const char *const fw_text[FW_RULES + 1] = {",
            *(f"\t{_c_string(t)}," for t in texts), "};", "",
            f"const struct fw_rule fw_table[{max(n, 1)}] = {{",
            *(f"\t{{{row}}}," for row in table), "};", "", INTERPRETER,
            Compiler(rs.rules).emit()]
    return header, "\n".join(body)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: fwc.py RULES OUT_DIR", file=sys.stderr)
        return 2
    rules, out = Path(argv[0]), Path(argv[1])
    try:
        rs = parse(rules.read_text(), str(argv[0]))
    except RuleError as e:
        print(f"fwc: {e}", file=sys.stderr)
        return 1
    header, code = generate(rs, rules.name)
    (out / "fw_rules.h").write_text(header)
    (out / "fw_rules.c").write_text(code)
    print(f"fwc: {len(rs.rules)} rules from {argv[0]}, policy "
          f"{'ACCEPT' if rs.policy_accept else 'DROP'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
