"""Errors name their cause: build step excerpts, run options, the cache path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ukl_build.progress import first_errors

from conftest import EXAMPLES, copy_example, run_cli

# What a full disk looked like in a kernel build's output: the cause sits in one
# line among make's summaries (which all contain "Error").
FULL_DISK = """\
  CC      kernel/fork.o
  LD      vmlinux.o
  OBJTOOL vmlinux.o
error: objtool: vmlinux.o: write: No space left on device
make[2]: *** [scripts/Makefile.vmlinux_o:61: vmlinux.o] Error 1
make[1]: *** [Makefile:1250: vmlinux_o] Error 2
make: *** [Makefile:226: __sub-make] Error 2""".splitlines()

MULTIPLE_MAIN = """\
gcc -static -o app a.o b.o
/usr/bin/ld: b.o: in function `main':
b.c:(.text+0x0): multiple definition of `main'; a.o:a.c:(.text+0x0): first defined here
collect2: error: ld returned 1 exit status""".splitlines()

COMPILER = """\
  CC      arch/x86/kernel/ukl.o
In file included from arch/x86/kernel/ukl.c:3:
arch/x86/kernel/ukl.c: In function 'ukl_start':
arch/x86/kernel/ukl.c:42:9: error: implicit declaration of function 'nope'
make[3]: *** [scripts/Makefile.build:250: arch/x86/kernel/ukl.o] Error 1""".splitlines()


@pytest.mark.parametrize("lines, cause", [
    (FULL_DISK, "No space left on device"),
    (MULTIPLE_MAIN, "multiple definition of `main'"),
    (COMPILER, "ukl.c:42:9: error: implicit declaration"),
])
def test_the_excerpt_starts_with_the_cause(lines: list[str], cause: str) -> None:
    excerpt = first_errors(lines, 25)
    assert cause in excerpt[0], excerpt
    assert any("Error" in ln or "collect2" in ln for ln in excerpt[1:])  # then the summaries


def test_without_a_recognisable_line_the_last_lines() -> None:
    lines = [f"line {i}" for i in range(100)]
    assert first_errors(lines, 5) == ["line 95", "line 96", "line 97", "line 98", "line 99"]


@pytest.mark.parametrize("args, message", [
    (["--timeout", "-5"], "at least 1"),
    (["--timeout", "nan"], "finite"),
    (["--timeout", "inf"], "finite"),
    (["--timeout", "1e-9"], "at least 1"),
    (["--timeout", "soon"], "not a number of seconds"),
    (["--smp", "-1"], "give 1 to 255 virtual CPUs"),
    (["--smp", "two"], "not a whole number"),
    (["--memory", "12Q"], "a size such as 256M"),
])
def test_run_options_are_checked(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "ukl_build", "run", str(EXAMPLES / "hello"), *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert f"argument {args[0]}" in proc.stderr  # names the option


@pytest.mark.parametrize("name, bad", [("my cache", "' '"), ("c:d", "':'")])
def test_a_cache_path_make_cannot_use_is_refused_before_any_work(
        tmp_path: Path, name: str, bad: str) -> None:
    project = copy_example("hello", tmp_path)
    cache = tmp_path / name
    proc = run_cli("build", str(project), env={**os.environ, "UKL_BUILD_CACHE": str(cache)},
                   timeout=60)
    assert proc.returncode != 0
    assert f"cache path {cache} (from UKL_BUILD_CACHE) contains {bad}" in proc.stderr, proc.stderr
    assert not cache.exists()  # nothing was made



# A build stand-in for the signal test: the CLI's `build` command making a cache entry
# slowly (as extraction does), so the signal arrives while a temporary exists.
_SLOW_BUILD = """
import sys, time
from pathlib import Path
import ukl_build.cli as cli
from ukl_build.cache import Cache

def slow_build(ns):
    def make(tmp):
        (tmp / "tree").mkdir()
        (tmp / "tree" / "half-extracted").write_bytes(b"x" * 4096)
        print("making", flush=True)
        time.sleep(60)
    Cache(Path(sys.argv[1])).entry("sources", "0" * 64, make)
    return 0

cli.cmd_build = slow_build
sys.exit(cli.main(["build", sys.argv[1]]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_end_a_build_as_sigint_does(tmp_path: Path, sig: int) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(tmp_path / "cache")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "making\n"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert f"terminated ({signal.Signals(sig).name})" in err
    assert list((tmp_path / "cache" / "sources").iterdir()) == []  # no .tmp-* left
