"""python -m benchmarks.profile IMAGE_DIR [VMLINUX] [--interval S] [--until REGEX] [-- APP ARGS]

A guest profiler that needs nothing in the guest: while the VM runs, ask
QEMU's monitor for the vCPU's registers every --interval seconds, map each
RIP to the vmlinux symbol that holds it, and print where the samples fell
(top functions) and a timeline (console lines interleaved with the
functions sampled since the previous line).  Under TCG a sample stops the
vCPU only between translation blocks, so the profile is of guest time.
Kernel-side counting tools (perf, ftrace) are not in a tiny kernel; this
works on any image ukl-build makes.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ukl_build.launcher.manifest import load_manifest
from ukl_build.launcher.options import RunOptions
from ukl_build.launcher.process import die_with_parent
from ukl_build.launcher.qemu import qemu_argv

_RIP = re.compile(rb"RIP=([0-9a-f]{16})")
_PROMPT = b"(qemu) "


@dataclass
class Profile:
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, rip)
    lines: list[tuple[float, str]] = field(default_factory=list)  # console, (seconds, text)
    seconds: float = 0.0


class Symbols:
    """Address -> function name, from vmlinux's symbol table."""

    def __init__(self, vmlinux: Path) -> None:
        from elftools.elf.elffile import ELFFile  # test extra; only the profiler needs it

        entries = []
        with open(vmlinux, "rb") as f:
            symtab = ELFFile(f).get_section_by_name(".symtab")
            if symtab is None:
                raise SystemExit(f"{vmlinux}: no symbol table")
            for s in symtab.iter_symbols():
                if s["st_info"]["type"] in ("STT_FUNC", "STT_NOTYPE") and s["st_value"] and s.name:
                    entries.append((s["st_value"], s.name))
        entries.sort()
        self._addrs = [a for a, _ in entries]
        self._names = [n for _, n in entries]

    def name(self, rip: int) -> str:
        if rip < 0xFFFF800000000000:
            return "[user]"
        i = bisect.bisect_right(self._addrs, rip) - 1
        return self._names[i] if i >= 0 else f"{rip:#x}"


def _until_prompt(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(_PROMPT):
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _command(sock: socket.socket, cmd: bytes) -> bytes:
    sock.sendall(cmd + b"\n")
    return _until_prompt(sock)


def record(image_dir: Path, opts: RunOptions, interval: float, until: str | None,
           timeout: float) -> Profile:
    """Boot the image under the sampler until ``until`` is printed, the VM ends or ``timeout``."""
    manifest = load_manifest(image_dir)
    with tempfile.TemporaryDirectory(prefix="ukl-prof-") as tmp:
        mon = Path(tmp) / "monitor.sock"
        argv = qemu_argv(manifest, image_dir, opts, opts.accel)
        argv += ["-monitor", f"unix:{mon},server=on,wait=on", "-S"]  # start paused
        prof = Profile()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        assert proc.stdout is not None
        done = threading.Event()
        rx = re.compile(until) if until else None
        start = 0.0

        def read_console() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                text = raw.decode(errors="replace").rstrip()
                prof.lines.append((time.monotonic() - start, text))
                if rx and rx.search(text):
                    break
            done.set()

        try:
            for _ in range(200):
                if mon.exists():
                    break
                time.sleep(0.02)
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(mon))
            _until_prompt(sock)  # the monitor's banner
            start = time.monotonic()
            _command(sock, b"cont")
            reader = threading.Thread(target=read_console, daemon=True)
            reader.start()
            while not done.is_set() and time.monotonic() - start < timeout:
                try:
                    out = _command(sock, b"info registers")
                except (EOFError, OSError):
                    break
                if m := _RIP.search(out):
                    prof.samples.append((time.monotonic() - start, int(m.group(1), 16)))
                time.sleep(interval)
            prof.seconds = time.monotonic() - start
            sock.close()
        finally:
            proc.kill()
            proc.wait()
    return prof


def report(prof: Profile, syms: Symbols, top: int, out: object = sys.stdout) -> None:
    write = out.write  # type: ignore[attr-defined]
    names = [(t, syms.name(rip)) for t, rip in prof.samples]
    counts = collections.Counter(n for _, n in names)
    total = len(names) or 1
    write(f"# {len(names)} samples in {prof.seconds:.2f} s\n# top functions\n")
    for name, n in counts.most_common(top):
        write(f"  {100.0 * n / total:5.1f}%  {n:5d}  {name}\n")
    write("# timeline: console lines, and the functions sampled since the previous line\n")
    i = 0
    for t, text in prof.lines:
        between = collections.Counter()
        while i < len(names) and names[i][0] <= t:
            between[names[i][1]] += 1
            i += 1
        if between:
            hot = ", ".join(f"{n} {c}" for n, c in between.most_common(4))
            write(f"  {'':8}   ({sum(between.values())} samples: {hot})\n")
        write(f"  {t:8.3f}   {text[:110]}\n")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    app_args = None
    if "--" in args:
        app_args = args[args.index("--") + 1:]
        args = args[:args.index("--")]
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("image_dir", type=Path)
    p.add_argument("vmlinux", type=Path, nargs="?",
                   help="the vmlinux of that image, for its symbols (default: the image's pvh "
                        "format, which builds with formats = [\"bzimage\", \"pvh\"])")
    p.add_argument("--interval", type=float, default=0.002, help="seconds between samples")
    p.add_argument("--until", help="stop at the first console line matching this regex")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--memory", default="256M")
    p.add_argument("--cmdline", default="", help="extra kernel command line")
    p.add_argument("--forward", action="append", default=[], metavar="HOST:GUEST",
                   help="forward a host port, to profile a server under load from the host")
    p.add_argument("--top", type=int, default=25)
    ns = p.parse_args(args)
    opts = RunOptions(memory=ns.memory, extra_cmdline=ns.cmdline, kernel_log=True, args=app_args,
                      forward=ns.forward)
    vmlinux = ns.vmlinux
    if vmlinux is None:
        pvh = load_manifest(ns.image_dir).get("images", {}).get("pvh")
        if pvh is None:
            p.error("no vmlinux given and the image has no pvh format (build with "
                    "-C formats=\"bzimage;pvh\")")
        vmlinux = ns.image_dir / pvh["file"]
    prof = record(ns.image_dir, opts, ns.interval, ns.until, ns.timeout)
    report(prof, Symbols(vmlinux), ns.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
