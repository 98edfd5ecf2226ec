"""The kernel build's compiler: ccache (local and remote storage) and distcc, and what they did.

ukl-build plugs into the engines teams already run: ccache's remote storage
(redis, http) shares compiled objects between machines, distcc spreads the
compiles that miss.  They stack the way ccache documents: ``CC="ccache gcc"``
with ``CCACHE_PREFIX=distcc``, so a hit never leaves the machine.

Each build gets its own ccache stats log (``stats_log``), so the line it
prints counts its own compiles even while other builds share the cache.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ukl_build.settings import Settings

STATS_LOG = "ccache-stats.log"


@dataclass(frozen=True)
class Compiler:
    """How make calls the compiler, and the environment that goes with it."""

    cc: str  # make's CC= value
    env: dict[str, str]
    jobs: int
    stats_log: Path | None  # ccache writes one record per compile here
    distcc: bool

    def describe(self) -> str:
        parts = [f"-j{self.jobs}"]
        if self.stats_log is not None:
            remote = self.env.get("CCACHE_REMOTE_STORAGE")
            parts.append("ccache" + (f" + remote {_redact(remote)}" if remote else ""))
        if self.distcc:
            parts.append(f"distcc {self.env['DISTCC_HOSTS']}")
        return ", ".join(parts)


def _redact(url: str) -> str:
    """A storage URL without its password (redis://:secret@host)."""
    return re.sub(r"(//[^/@:]*:)[^@/]*@", r"\1***@", url)


def _slots(hosts: str) -> int:
    """The jobs distcc hosts take: each HOST/N counts N, a host without /N counts 2."""
    total = 0
    for host in hosts.split():
        m = re.search(r"/(\d+)", host)
        total += int(m.group(1)) if m else 2
    return total


def kernel_compiler(settings: Settings, env: dict[str, str], build_dir: Path,
                    gcc: str = "gcc") -> Compiler:
    """The compiler setup of this build's kernel (settings over the environment)."""
    env = dict(env)
    ccache = shutil.which("ccache")
    hosts = " ".join(settings.distcc.hosts) or env.get("DISTCC_HOSTS", "")
    distcc = shutil.which("distcc") if hosts else None
    if hosts and distcc is None:
        from ukl_build.errors import ConfigError

        raise ConfigError(f"{settings.origin('distcc.hosts')}: distcc is not installed",
                          hint="apt-get install distcc")
    jobs = settings.jobs or max(os.cpu_count() or 1, _slots(hosts) if distcc else 0)
    if distcc:
        env["DISTCC_HOSTS"] = hosts
    stats_log = None
    if ccache:
        if settings.ccache.remote_storage is not None:
            env["CCACHE_REMOTE_STORAGE"] = settings.ccache.remote_storage
        if settings.ccache.remote_only:
            env["CCACHE_REMOTE_ONLY"] = "1"
        env["CCACHE_MAXSIZE"] = settings.ccache.max_size
        stats_log = build_dir / STATS_LOG
        env["CCACHE_STATSLOG"] = str(stats_log)
        if distcc:
            env["CCACHE_PREFIX"] = distcc
        cc = f"{ccache} {shutil.which(gcc) or gcc}"
    elif distcc:
        cc = f"{distcc} {shutil.which(gcc) or gcc}"
    else:
        cc = shutil.which(gcc) or gcc
    return Compiler(cc, env, jobs, stats_log, distcc is not None)


@dataclass(frozen=True)
class CacheStats:
    local_hits: int
    remote_hits: int
    misses: int  # compiled (locally, or by distcc when it is on)

    @property
    def compiles(self) -> int:
        return self.local_hits + self.remote_hits + self.misses


def read_stats(log: Path) -> CacheStats:
    """Count one build's compiles from ccache's stats log (one record per compile)."""
    records: list[set[str]] = []
    try:
        text = log.read_text()
    except FileNotFoundError:
        return CacheStats(0, 0, 0)
    for line in text.splitlines():
        if line.startswith("#"):
            records.append(set())
        elif records and line.strip():
            records[-1].add(line.strip())
    counts: Counter[str] = Counter()
    for r in records:
        if "local_storage_hit" in r:
            counts["local"] += 1
        elif "remote_storage_hit" in r:
            counts["remote"] += 1
        elif "cache_miss" in r:
            counts["miss"] += 1
    return CacheStats(counts["local"], counts["remote"], counts["miss"])


def stats_line(stats: CacheStats, compiler: Compiler) -> str:
    """The one line a build prints about its compiler cache."""
    sent = f", {stats.misses} compiled through distcc" if compiler.distcc else ""
    return (f"compiler cache: {stats.compiles} compiles: {stats.local_hits} local hits, "
            f"{stats.remote_hits} remote hits, {stats.misses} misses{sent}")
