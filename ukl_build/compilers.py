"""The kernel build's compiler: ccache (local and remote storage) and distcc, and what they did.

ukl-build plugs into the engines teams already run: ccache's remote storage
(redis, http) shares compiled objects between machines, distcc spreads the
compiles that miss.  They stack the way ccache documents: ``CC="ccache gcc"``
with ``CCACHE_PREFIX=distcc``, so a hit never leaves the machine.

ccache runs in depend mode: it keys an object on the files the compiler lists
as the object's dependencies (kbuild asks for that list, ``-Wp,-MMD``, and
trusts it itself), so a miss costs one compiler run instead of a
preprocessor run to compute the key plus the compile (a cold kernel build:
+2 % over gcc alone instead of +28 %, docs/design.md).  One input is missing
from that list: the file an ``.incbin`` directive pulls in (the initramfs,
the compressed kernel), and depend mode cannot see the directive.  make's
``CC`` is therefore a small script (``KERNEL_CC``, written into the cache)
that compiles such a source without ccache and hands every other one to
ccache.

Each build gets its own ccache stats log (``stats_log``) and distcc client
log (``distcc_log``), so the line it prints counts its own compiles even
while other builds share the cache and the farm.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ukl_build.files import new_path
from ukl_build.settings import Settings

STATS_LOG = "ccache-stats.log"
DISTCC_LOG = "distcc.log"

# make's CC when ccache is on: ``kernel-cc-HASH CCACHE GCC``.  A source that names
# .incbin is compiled without ccache (see above).  The sources are tested, not the
# headers they include: no header of the kernel uses .incbin.
KERNEL_CC = """#!/bin/sh
# ukl-build: the kernel's compiler, ccache in depend mode except for sources
# that pull in a file with .incbin, which depend mode cannot see.
# usage: kernel-cc CCACHE COMPILER ARG...
ccache=$1
shift
for arg do
	case $arg in
	*.c | *.S)
		if [ -f "$arg" ] && grep -qF .incbin "$arg"; then
			exec "$@"
		fi
		;;
	esac
done
CCACHE_DEPEND=1 exec "$ccache" "$@"
"""


def kernel_cc(bin_dir: Path) -> Path:
    """``KERNEL_CC`` in ``bin_dir``, named by its content: the path is part of every
    compile's command line that kbuild compares, so it changes only with the script.
    Its content is checked on every use and written again if it differs."""
    digest = hashlib.sha256(KERNEL_CC.encode()).hexdigest()[:16]
    path = bin_dir / f"kernel-cc-{digest}"
    try:
        ok = path.read_text() == KERNEL_CC and os.access(path, os.X_OK)
    except (OSError, UnicodeDecodeError):
        ok = False
    if not ok:  # made whole, executable, then renamed: a running make never sees less
        bin_dir.mkdir(parents=True, exist_ok=True)
        with new_path(path) as tmp:
            tmp.write_text(KERNEL_CC)
            tmp.chmod(0o755)
    return path


@dataclass(frozen=True)
class Compiler:
    """How make calls the compiler, and the environment that goes with it."""

    cc: str  # make's CC= value
    env: dict[str, str]
    jobs: int
    stats_log: Path | None  # ccache writes one record per compile here
    distcc_log: Path | None  # the distcc client logs each job it ran here

    @property
    def distcc(self) -> bool:
        return self.distcc_log is not None

    def reset_logs(self) -> None:
        """Forget earlier builds' records: the line counts this build's compiles only."""
        for log in (self.stats_log, self.distcc_log):
            if log is not None:
                log.unlink(missing_ok=True)

    def describe(self) -> str:
        parts = [f"-j{self.jobs}"]
        if self.stats_log is not None:
            remote = self.env.get("CCACHE_REMOTE_STORAGE")  # "" is none
            parts.append("ccache" + (f" + remote {_redact(remote)}" if remote else ""))
        else:
            parts.append("no compiler cache")
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


# What makes compiles leave this machine (or take objects others compiled).
_SHARING_VARIABLES = ("CCACHE_REMOTE_STORAGE", "CCACHE_REMOTE_ONLY", "CCACHE_PREFIX",
                      "DISTCC_HOSTS")


def kernel_compiler(settings: Settings, env: dict[str, str], build_dir: Path, bin_dir: Path,
                    gcc: str = "gcc", shared: bool = True) -> Compiler:
    """The compiler setup of this build's kernel (settings over the environment);
    ``bin_dir`` holds the compiler script that puts ccache in depend mode.

    ``shared=False`` compiles here, with no compiler cache, whatever the settings and
    the environment say (``verify``: each build must compile everything itself; an
    empty cache could only miss, and each miss would cost ccache's preprocessing).
    """
    env = dict(env)
    if not shared:
        settings = _unshared(settings, env)
    ccache = shutil.which("ccache") if shared else None
    distcc, distcc_log, slots = _distcc_env(settings, env, build_dir)
    jobs = settings.jobs or max(os.cpu_count() or 1, slots)
    gcc_path = shutil.which(gcc) or gcc
    if ccache:
        stats_log = _ccache_env(settings, env, build_dir, distcc)
        return Compiler(f"{kernel_cc(bin_dir)} {ccache} {gcc_path}", env, jobs, stats_log,
                        distcc_log)
    return Compiler(f"{distcc} {gcc_path}" if distcc else gcc_path, env, jobs, None, distcc_log)


def _distcc_env(settings: Settings, env: dict[str, str],
                build_dir: Path) -> tuple[str | None, Path | None, int]:
    """distcc (its path, its log, its hosts' slots) where hosts are named (settings over
    the environment), its variables into ``env``; (None, None, 0) where none are."""
    hosts = " ".join(settings.distcc.hosts) or env.get("DISTCC_HOSTS", "")
    if not hosts:
        return None, None, 0
    distcc = shutil.which("distcc")
    if distcc is None:
        from ukl_build.errors import ConfigError

        raise ConfigError(f"{settings.origin('distcc.hosts')}: distcc is not installed",
                          hint="apt-get install distcc")
    env["DISTCC_HOSTS"] = hosts
    log = build_dir / DISTCC_LOG
    env["DISTCC_LOG"] = str(log)
    return distcc, log, _slots(hosts)


def _unshared(settings: Settings, env: dict[str, str]) -> Settings:
    """``settings`` with no remote store and no distcc; their variables out of ``env``."""
    for name in _SHARING_VARIABLES:
        env.pop(name, None)
    env["CCACHE_REMOTE_STORAGE"] = ""  # over a ccache.conf that names one
    return replace(settings, ccache=replace(settings.ccache, remote_storage=None,
                                            remote_only=False),
                   distcc=replace(settings.distcc, hosts=[]))


def _ccache_env(settings: Settings, env: dict[str, str], build_dir: Path,
                distcc: str | None) -> Path:
    """ccache's variables for this build into ``env``; the path of its stats log."""
    if settings.ccache.remote_storage is not None:
        env["CCACHE_REMOTE_STORAGE"] = settings.ccache.remote_storage
    if settings.ccache.remote_only:
        env["CCACHE_REMOTE_ONLY"] = "1"
    env["CCACHE_MAXSIZE"] = settings.ccache.max_size
    stats_log = build_dir / STATS_LOG
    env["CCACHE_STATSLOG"] = str(stats_log)
    if distcc:
        env["CCACHE_PREFIX"] = distcc
    return stats_log


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
        # A miss first: a result ccache found corrupted is recorded as a storage hit
        # and then as the miss it turned into (the compile ran).
        if "cache_miss" in r:
            counts["miss"] += 1
        elif "local_storage_hit" in r:
            counts["local"] += 1
        elif "remote_storage_hit" in r:
            counts["remote"] += 1
    return CacheStats(counts["local"], counts["remote"], counts["miss"])


_DISTCC_JOB = re.compile(r"^distcc\[(\d+)\] compile (\S+) on (\S+) completed ok$", re.M)
_DISTCC_FALLBACK = re.compile(r"^distcc\[(\d+)\] .*failed to distribute", re.M)
HERE = "(here)"  # what distcc ran itself, not distributable: probes, links, some assembler
FELL_BACK = "(fell back)"  # jobs a host failed (or refused) that distcc then compiled here


def read_distcc(log: Path) -> Counter[str]:
    """The compile jobs distcc ran, per host, from its client log (``DISTCC_LOG``).

    distcc logs ``compile FILE on HOST completed ok`` for each job a host ran; the
    commands it must run here (kbuild's compiler probes, links, ``-x`` assembler)
    name no file and count as ``HERE``.  A job it failed to distribute is logged as
    compiled "on localhost" by the same process after a warning: ``FELL_BACK``.
    """
    try:
        text = log.read_text(errors="replace")
    except FileNotFoundError:
        return Counter()
    fell_back = set(_DISTCC_FALLBACK.findall(text))
    return Counter(HERE if source == "(null)" else FELL_BACK if pid in fell_back else host
                   for pid, source, host in _DISTCC_JOB.findall(text))


def stats_line(compiler: Compiler) -> str:
    """The one line a build prints about its compiler cache and distcc."""
    parts = []
    if compiler.stats_log is not None:
        s = read_stats(compiler.stats_log)
        parts.append(f"{s.compiles} compiles: {s.local_hits} local hits, "
                     f"{s.remote_hits} remote hits, {s.misses} misses")
    if compiler.distcc_log is not None:
        jobs = read_distcc(compiler.distcc_log)
        here = jobs.pop(HERE, 0)
        fell_back = jobs.pop(FELL_BACK, 0)
        hosts = ", ".join(f"{host} {n}" for host, n in sorted(jobs.items()))
        parts.append(f"distcc sent {sum(jobs.values())} jobs" + (f" ({hosts})" if hosts else "")
                     + f", ran {here} here"
                     + (f", {fell_back} here after failing to distribute them" if fell_back
                        else ""))
    return "compiler cache: " + "; ".join(parts) if parts else ""
