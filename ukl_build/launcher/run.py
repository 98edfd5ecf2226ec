"""Boot an image and return the app's exit status."""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .accel import choose_accel
from .cmdline import HOST_CLOCK_LEAD_NS
from .console import Console, outcome
from .firmware import firmware_files
from .forward import ListenForwarder, check_host_ports
from .manifest import Manifest, load_manifest
from .options import EXIT_TIMEOUT, FIRMWARE_FORMATS, RunError, RunOptions
from .process import die_with_parent, kill_after, raise_on_termination
from .qemu import BootFiles, forwards, qemu_argv
from .qmp import resume_at
from .volumes import attach, prepare


def run_image(image_dir: Path, opts: RunOptions, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """Boot, stream the console to ``out``, return the app's exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    manifest = load_manifest(image_dir)
    accel = choose_accel(opts, err)
    tmp = Path(tempfile.mkdtemp(prefix="ukl-run-"))
    forwarder = None
    try:
        argv, boot = _command(manifest, image_dir, opts, accel, tmp)
        prepare(attach(manifest.get("volumes", {}), opts.volumes, boot.scratch), err)
        if boot.listen is not None and boot.qmp is not None:
            fwds = forwards(opts.forward)
            check_host_ports(fwds)
            forwarder = ListenForwarder(boot.listen, boot.qmp, fwds, err)
        print(f"[ukl-build] booting {manifest.get('name', image_dir.name)} "
              f"({opts.image}, {opts.machine}, {accel})", file=err, flush=True)
        return _supervise(argv, boot, opts, (out, err), forwarder)
    finally:
        if forwarder is not None:
            forwarder.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _command(manifest: Manifest, image_dir: Path, opts: RunOptions, accel: str,
             tmp: Path) -> tuple[list[str], BootFiles]:
    """QEMU's command line and the boot's own files, in ``tmp``."""
    # The host's clock goes on the command line: not for images that carry theirs.
    ours = "cmdline_builtin" not in manifest and opts.image not in FIRMWARE_FORMATS
    clock = accel == "tcg" and ours
    # Forwards open when the guest listens: kernels that say so, on our command line.
    listen = (ours and bool(opts.forward) and not opts.forward_at_start
              and bool(manifest.get("listen_notify")))
    boot = BootFiles(qmp=tmp / "qmp.sock" if clock or listen else None, scratch=tmp,
                     host_clock_ns=time.time_ns() + HOST_CLOCK_LEAD_NS if clock else None,
                     listen=tmp / "listen.sock" if listen else None,
                     firmware=firmware_files(manifest, image_dir, opts, tmp))
    return qemu_argv(manifest, image_dir, opts, accel, boot=boot), boot


@dataclass
class _Qemu:
    """A QEMU process that dies with us (even on SIGKILL: no orphaned VM holding the
    forwarded ports), and what it says on stderr."""

    proc: subprocess.Popen[bytes]
    said: list[bytes]
    reader: threading.Thread

    @classmethod
    def start(cls, argv: list[str], interactive: bool) -> _Qemu:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=None if interactive else subprocess.DEVNULL,
                                preexec_fn=die_with_parent(signal.SIGKILL))
        assert proc.stdout is not None and proc.stderr is not None
        said: list[bytes] = []
        stderr = proc.stderr
        reader = threading.Thread(target=lambda: said.extend(stderr), daemon=True)
        reader.start()
        return cls(proc, said, reader)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def words(self) -> str:
        return b"".join(self.said).decode(errors="replace").strip()


def _resume(qemu: _Qemu, boot: BootFiles, err: TextIO) -> None:
    """Start a QEMU that waits paused (``boot.qmp``) at the host time its kernel was told."""
    if boot.qmp is None or boot.host_clock_ns is None:
        return
    try:
        late = resume_at(boot.qmp, boot.host_clock_ns, qemu.proc)
    except RunError as e:  # QEMU refused to start: its own words say why
        qemu.stop()
        qemu.reader.join(timeout=2)
        said = qemu.words()
        raise RunError(f"{e}\n    QEMU said: {said[-1000:]}" if said else str(e)) from None
    if late > 5_000_000:
        print(f"[ukl-build] QEMU started up to {late / 1e6:.0f} ms late: the guest's "
              "wall clock is up to that much behind", file=err, flush=True)


def _stream(qemu: _Qemu, console: Console, forwarder: ListenForwarder | None) -> None:
    """Pass QEMU's console on, line by line, until it ends.  The guest's listen notices
    are taken first whenever the console has output: the guest wrote them before it, so
    a client that waits for the server's "ready" line finds the forward open."""
    assert qemu.proc.stdout is not None
    fd = qemu.proc.stdout.fileno()
    os.set_blocking(fd, False)
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        if forwarder is not None and forwarder.connect(qemu.proc):
            sel.register(forwarder, selectors.EVENT_READ)
        while True:
            sel.select()
            if forwarder is not None and not forwarder.poll(qemu.proc):
                sel.unregister(forwarder)
                forwarder = None
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            lines, pending = _split_lines(pending, chunk)
            for raw in lines:
                console.feed(raw)
            if console.refused is not None:  # the firmware would wait for a key press
                qemu.proc.kill()
            if not chunk:
                break
    qemu.proc.wait()


def _split_lines(pending: bytes, chunk: bytes) -> tuple[list[bytes], bytes]:
    """Whole lines of ``pending + chunk`` and what is left; at the end (an empty
    ``chunk``), a last line without its newline too."""
    if not chunk:
        return ([pending] if pending else []), b""
    *lines, rest = (pending + chunk).split(b"\n")
    return lines, rest


def _supervise(argv: list[str], boot: BootFiles, opts: RunOptions,
               streams: tuple[TextIO, TextIO], forwarder: ListenForwarder | None) -> int:
    """Run QEMU to its end, the console streamed to ``out``; the launcher's exit status."""
    out, err = streams
    start = time.monotonic()
    interactive = sys.stdin is not None and sys.stdin.isatty() and out is sys.stdout
    restore = raise_on_termination(lambda signum: SystemExit(128 + signum))  # QEMU killed
    qemu = _Qemu.start(argv, interactive)
    timer, timed_out = kill_after(qemu.proc, opts.timeout)
    console = Console(out)
    try:
        _resume(qemu, boot, err)
        _stream(qemu, console, forwarder)
    except KeyboardInterrupt:
        qemu.stop()
        print("\n[ukl-build] interrupted; VM stopped", file=err)
        return 130
    finally:
        if timer:
            timer.cancel()
        qemu.stop()  # also on SIGTERM: never leave an orphaned VM behind
        restore()
    qemu.reader.join(timeout=2)
    if timed_out.is_set():
        print(f"[ukl-build] timeout: VM stopped after {opts.timeout:g} s", file=err, flush=True)
        return EXIT_TIMEOUT
    return outcome(console, time.monotonic() - start, qemu.proc.returncode, qemu.said, err)
