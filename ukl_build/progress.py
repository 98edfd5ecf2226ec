"""Logging in one place: a full log file in the build dir, live progress on stderr."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ukl_build.errors import BuildError, Terminated
from ukl_build.launcher.process import die_with_parent, raise_on_termination
from ukl_build.supervise import supervised

ERROR_LINES = 25  # of a failed command's output, quoted in the error


class Reporter:
    """Writes every line to the log file and a short account to stderr."""

    def __init__(self, log_path: Path | None, stream: TextIO | None = None) -> None:
        self.log_path = log_path
        self.stream = stream if stream is not None else sys.stderr
        self._log: TextIO | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115
        self._start = time.monotonic()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._live = False

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    @property
    def is_tty(self) -> bool:
        """Whether live progress can redraw one line (else it prints lines sparingly)."""
        return self._tty

    def log(self, line: str) -> None:
        """Write a line to the log file only."""
        if self._log is not None:
            self._log.write(line.rstrip("\n") + "\n")
            self._log.flush()

    def stage(self, name: str, message: str) -> None:
        """Announce a pipeline step on stderr and in the log."""
        self._end_live()
        line = f"[ukl-build] {name}: {message}"
        self.log(line)
        print(line, file=self.stream, flush=True)

    def live(self, text: str) -> None:
        """A progress line that replaces itself on a terminal."""
        if self._tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            self._live = True
        else:
            print(text, file=self.stream, flush=True)

    def _end_live(self) -> None:
        if self._live:
            self.stream.write("\n")
            self.stream.flush()
            self._live = False

    def exception(self, exc: BaseException) -> None:
        """Put a traceback in the log (never on the console)."""
        self.log("".join(traceback.format_exception(exc)))

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        step: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        on_line: Callable[[str], None] | None = None,
        keep_fds: Sequence[int] = (),
    ) -> None:
        """Run a command, its output to the log; raise BuildError naming the step on failure.

        On failure the message holds the first lines that look like errors (or the last lines),
        and the path of the full log.
        """
        args = self._logged(argv, cwd)
        lines: list[str] = []
        # Under a supervisor: the command and everything it forks dies with this
        # process (even on SIGKILL), and fds in keep_fds (a cache lock) stay held
        # until the last of them is gone.
        proc = subprocess.Popen(
            supervised(args),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            pass_fds=tuple(keep_fds),
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                self.log(line)
                lines.append(line.rstrip("\n"))
                if len(lines) > 4000:
                    del lines[:2000]
                if on_line is not None:
                    on_line(line)
            rc = proc.wait()
        except BaseException:
            proc.terminate()  # the supervisor kills the command's whole process group
            proc.wait()
            raise
        self._end_live()
        if rc != 0:
            raise self._failure(step, rc, args[0], lines)

    def capture(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        step: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        check: bool = True,
    ) -> Captured:
        """Run a short query (a tool's version, a symbol table, an index) and return its
        output: the command line and its error output go to the log; the command dies
        with this process (and is killed if this one is interrupted); with ``check``, a
        non-zero exit raises BuildError naming the step and quoting the error output.

        The one way, with :meth:`run`, that ukl-build starts a program (a test checks)."""
        args = self._logged(argv, cwd)
        try:
            proc = subprocess.run(
                args, cwd=cwd, env=dict(env) if env is not None else None, input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True, check=False, preexec_fn=die_with_parent(signal.SIGKILL))
        except OSError as exc:
            raise BuildError(f"{step} failed: cannot run {args[0]}: {exc.strerror}") from exc
        stderr = proc.stderr.decode(errors="replace")
        if stderr.strip():
            self.log(stderr)
        if check and proc.returncode != 0:
            raise self._failure(step, proc.returncode, args[0], stderr.splitlines())
        return Captured(proc.returncode, proc.stdout, stderr)

    def _logged(self, argv: Sequence[str | os.PathLike[str]], cwd: Path | None) -> list[str]:
        """The command line as strings, written to the log (with where it runs)."""
        args = [os.fspath(a) for a in argv]
        self.log(f"$ {subprocess.list2cmdline(args)}" + (f"   (in {cwd})" if cwd else ""))
        return args

    def _failure(self, step: str, rc: int, program: str, output: list[str]) -> BuildError:
        """The error of a failed command: the step, its status, the first lines of its
        output that look like errors (or its last lines), and where the full log is."""
        return BuildError(f"{step} failed (exit status {rc}): {program}\n"
                          + _indent(first_errors(output, ERROR_LINES)),
                          hint=f"full log: {self.log_path}" if self.log_path else None)


@dataclass(frozen=True)
class Captured:
    """What :meth:`Reporter.capture` got from a command."""

    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")


# Lines that name a cause, not only that something failed: a compiler's or
# assembler's diagnostic (file:line: error), the linker's reasons, the system's.
_CAUSES = re.compile(
    r"^\S+?:\d+(?::\d+)?: (?:fatal )?error: "  # gcc, as, ld scripts
    r"|No space left on device|Disk quota exceeded|Read-only file system"
    r"|Permission denied|Cannot allocate memory|Out of memory|Killed\b"
    r"|multiple definition of|undefined reference to|cannot find -l"
    r"|No rule to make target|No such file or directory"
)
# Lines that only say that something failed (make's "Error 1", collect2's summary).
_FAILED = ("error", "Error", "ERROR", "fatal", "***")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (a
    KeyboardInterrupt), as SIGINT raises KeyboardInterrupt."""
    restore = raise_on_termination(Terminated)
    try:
        yield
    finally:
        restore()


def first_errors(lines: list[str], limit: int) -> list[str]:
    """The lines that name a cause first (in order), then those that only say that a
    step failed; else the last lines."""
    causes: list[str] = []
    failed: list[str] = []
    for ln in lines:
        if _CAUSES.search(ln):
            causes.append(ln)
        elif any(m in ln for m in _FAILED):
            failed.append(ln)
    return (causes + failed or lines[-limit:])[:limit]


def _indent(lines: list[str]) -> str:
    return "\n".join("    " + ln for ln in lines)
