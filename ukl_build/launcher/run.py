"""Boot an image and return the app's exit status."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

from .accel import choose_accel
from .cmdline import HOST_CLOCK_LEAD_NS
from .console import Console, outcome
from .firmware import firmware_files
from .manifest import Manifest, load_manifest
from .options import EXIT_TIMEOUT, RunError, RunOptions
from .process import die_with_parent, kill_after, raise_on_termination
from .qemu import qemu_argv
from .qmp import resume_at


def run_image(image_dir: Path, opts: RunOptions, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """Boot, stream the console to ``out``, return the app's exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    manifest = load_manifest(image_dir)
    accel = choose_accel(opts, err)
    tmp = Path(tempfile.mkdtemp(prefix="ukl-run-"))
    try:
        return _run(manifest, image_dir, opts, accel, tmp, out, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(manifest: Manifest, image_dir: Path, opts: RunOptions, accel: str,
         tmp: Path, out: TextIO, err: TextIO) -> int:
    start_ns = time.time_ns() + HOST_CLOCK_LEAD_NS
    # The host's clock goes on the command line: not for images that carry theirs.
    clock = accel == "tcg" and "cmdline_builtin" not in manifest
    host_clock = (start_ns, tmp / "qmp.sock") if clock else None
    argv = qemu_argv(manifest, image_dir, opts, accel, host_clock=host_clock,
                     firmware=firmware_files(manifest, image_dir, opts, tmp))
    print(f"[ukl-build] booting {manifest.get('name', image_dir.name)} "
          f"({opts.image}, {opts.machine}, {accel})", file=err, flush=True)
    start = time.monotonic()
    interactive = sys.stdin is not None and sys.stdin.isatty() and out is sys.stdout
    restore = raise_on_termination(lambda signum: SystemExit(128 + signum))  # QEMU killed
    # QEMU dies with us, even on SIGKILL: no orphaned VM holding the forwarded ports.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=None if interactive else subprocess.DEVNULL,
                            preexec_fn=die_with_parent(signal.SIGKILL))
    assert proc.stdout is not None and proc.stderr is not None
    qemu_err: list[bytes] = []
    stderr = proc.stderr
    err_thread = threading.Thread(target=lambda: qemu_err.extend(stderr), daemon=True)
    err_thread.start()
    timer, timed_out = kill_after(proc, opts.timeout)
    console = Console(out)
    try:
        if host_clock is not None:
            try:
                late = resume_at(host_clock[1], host_clock[0], proc)
            except RunError as e:  # QEMU refused to start: its own words say why
                proc.kill()
                proc.wait()
                err_thread.join(timeout=2)
                said = b"".join(qemu_err).decode(errors="replace").strip()
                raise RunError(f"{e}\n    QEMU said: {said[-1000:]}" if said else str(e)) \
                    from None
            if late > 5_000_000:
                print(f"[ukl-build] QEMU started up to {late / 1e6:.0f} ms late: the guest's "
                      "wall clock is up to that much behind", file=err, flush=True)
        for raw in proc.stdout:
            console.feed(raw)
            if console.refused is not None:  # the firmware would wait for a key press
                proc.kill()
        proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        print("\n[ukl-build] interrupted; VM stopped", file=err)
        return 130
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:  # also on SIGTERM: never leave an orphaned VM behind
            proc.kill()
            proc.wait()
        restore()
    err_thread.join(timeout=2)
    if timed_out.is_set():
        print(f"[ukl-build] timeout: VM stopped after {opts.timeout:g} s", file=err, flush=True)
        return EXIT_TIMEOUT
    return outcome(console, time.monotonic() - start, proc.returncode, qemu_err, err)
