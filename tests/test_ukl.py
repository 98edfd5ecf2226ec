"""UKL mode end to end: the app linked into vmlinux, running in ring 0 (QEMU TCG)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from ukl_build.cache import Cache

from conftest import Builds, check_httpd, probe_lines, skip_if_clocks_uncalibrated, tsc_calibration_failed
from conftest import run_image as run

pytestmark = pytest.mark.kernel


def test_hello_runs_in_ring0_and_returns_status(builds: Builds) -> None:
    result = builds("hello", "ukl")
    assert result.images.manifest["mode"] == "ukl"
    rc, out, err = run(result.images.directory)
    assert "Hello, world, from a unikernel! (CPL 0)" in out, err
    assert rc == 3, err
    assert "app exited with status 3" in err


def _symbols(path: Path, defined_only: bool = True) -> dict[str, int]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        assert symtab is not None
        return {
            s.name: s["st_value"]
            for s in symtab.iter_symbols()
            if s.name and s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")
            and (not defined_only or s["st_shndx"] != "SHN_UNDEF")
        }


def test_vmlinux_holds_app_symbols_only_prefixed(builds: Builds) -> None:
    result = builds("hello", "ukl")
    app_object = result.app.path.parent / "init"  # before prefixing
    app = _symbols(app_object)
    kernel = _symbols(result.kernel.vmlinux)
    assert "main" in app and "ukl_app_main" in kernel and "main" not in kernel
    # app.lds names the bounds of sections a nolibc app may leave empty (TLS, constructors)
    lds = {"__ukl_tls_start", "__ukl_tls_end", "__init_array_start", "__init_array_end",
           "__fini_array_start", "__fini_array_end"}
    for name in set(app) - lds:
        assert f"ukl_app_{name}" in kernel, name
        # a same-named kernel symbol (memcpy, strlen, ...) is the kernel's, not the app's
        if name in kernel:
            assert kernel[name] != kernel[f"ukl_app_{name}"], name


def test_httpd_serves_in_ukl_mode(builds: Builds) -> None:
    check_httpd(builds("httpd", "ukl").images.directory, requests=400)


def test_every_runtime_wrapper_gives_the_same_results_in_both_modes(builds: Builds) -> None:
    user = builds("probe", "user")
    ukl = builds("probe", "ukl")
    rc_user, out_user, err_user = run(user.images.directory)
    rc_ukl, out_ukl, err_ukl = run(ukl.images.directory)
    assert "probe: syscalls (CPL 3)" in out_user and "probe: syscalls (CPL 0)" in out_ukl
    assert "close+bind same port: ok" in out_ukl
    assert probe_lines(out_user) == probe_lines(out_ukl), (out_user, out_ukl)
    assert "FAIL" not in out_ukl, out_ukl
    assert rc_user == 0 and rc_ukl == 0, (err_user, err_ukl)


def test_shortcuts_give_the_same_results_as_user_mode(builds: Builds) -> None:
    plain = builds("probe", "ukl")
    shortcuts = builds("probe", "ukl", shortcuts="true")
    assert shortcuts.images.manifest["app"]["shortcuts"] is True
    assert plain.images.manifest["app"]["shortcuts"] is False
    # The same kernel objects: only the app archive differs, vmlinux is relinked.
    assert shortcuts.kernel.build_dir == plain.kernel.build_dir
    assert shortcuts.images.manifest["app"]["sha256"] != plain.images.manifest["app"]["sha256"]
    rc_user, out_user, err_user = run(builds("probe", "user").images.directory)
    rc, out, err = run(shortcuts.images.directory)
    assert "read(socket): ok" in out and "recv(udp, empty datagram): ok" in out, out + err
    assert probe_lines(out) == probe_lines(out_user), (out, out_user)
    assert "FAIL" not in out and rc == 0 and rc_user == 0, (out, err, err_user)


def test_httpd_serves_with_shortcuts(builds: Builds) -> None:
    # read()/write() on the connections go straight to tcp_recvmsg()/tcp_sendmsg().
    check_httpd(builds("httpd", "ukl", shortcuts="true").images.directory, requests=400)


@pytest.mark.parametrize("mode", ["user", "ukl"])
def test_threads_with_syscalls_and_fp_math_on_2_vcpus(builds: Builds, mode: str) -> None:
    rc, out, err = run(builds("probe", mode).images.directory, "--smp", "2", "--", "threads",
                       timeout=240)
    assert "threads: syscalls + FP math: ok" in out, out + err
    assert rc == 0, out + err


def test_null_dereference_ends_the_vm_with_a_report(builds: Builds) -> None:
    rc, out, err = run(builds("probe", "ukl").images.directory, "--", "null", timeout=90)
    assert rc not in (0, 124), out + err
    assert "NULL pointer dereference" in out and "ukl_app_main" in out, out


def test_stack_overflow_ends_the_vm_with_a_report(builds: Builds) -> None:
    rc, out, err = run(builds("probe", "ukl").images.directory, "--", "overflow", timeout=90)
    assert rc not in (0, 124), out + err
    assert "ukl: application stack overflow in ukl_app_overflow" in out, out


def test_freestanding_headers_in_ring0(builds: Builds) -> None:
    # limits.h, float.h, stdarg.h, ... from the compiler, with nolibc, linked into vmlinux
    rc, out, err = run(builds("stdheaders", "ukl").images.directory)
    assert "stdheaders: ok" in out, err
    assert rc == 0, err


# musl in ring 0 (libc_patches/musl-1.2.3): the same probe, the same answers.

SYSCALL_INSTRUCTION = re.compile(r"\t(syscall|sysenter|int\s+\$0x80)\s*$", re.M)


def test_ukl_musl_has_no_syscall_instruction(builds: Builds, cache: Cache) -> None:
    result = builds("probe", "ukl", libc="musl")
    archive = result.app.path  # the app with every musl member it uses, prefixed
    libc = cache.root / "libcs"
    ukl_libcs = [p.parent for p in libc.glob("*/sysroot/lib/ukl_crt1.o")]
    assert ukl_libcs, "no UKL musl in the cache"
    for path in [archive, *(lib / "libc.a" for lib in ukl_libcs)]:
        dump = subprocess.run(["objdump", "-d", str(path)], capture_output=True, text=True,
                              check=True).stdout
        assert "<ukl_app___ukl_syscall>" not in dump
        found = SYSCALL_INSTRUCTION.findall(dump)
        assert not found, f"{path}: {len(found)} system call instructions"
    # The user-mode musl is the unpatched one: the same check finds them there.
    user = builds("probe", "user", libc="musl")
    dump = subprocess.run(["objdump", "-d", str(user.app.path)], capture_output=True, text=True,
                          check=True).stdout
    assert SYSCALL_INSTRUCTION.search(dump)


def test_probe_on_musl_gives_the_same_results_in_both_modes(builds: Builds) -> None:
    ukl = builds("probe", "ukl", libc="musl")
    user = builds("probe", "user", libc="musl")
    assert ukl.images.manifest["app"]["libc"] == "musl"
    # musl's clock_gettime() calls the kernel's reader in ring 0 (patches 0018, musl 0006)
    assert "ukl_clock_gettime" in _undefined(ukl.app.path)
    rc_user, out_user, err_user = run(user.images.directory)
    rc_ukl, out_ukl, err_ukl = run(ukl.images.directory)
    assert rc_user == 0, out_user + err_user
    assert "probe: syscalls (CPL 0)" in out_ukl, out_ukl + err_ukl
    assert "FAIL" not in out_ukl and rc_ukl == 0, out_ukl + err_ukl
    assert probe_lines(out_user) == probe_lines(out_ukl), (out_user, out_ukl)
    # nolibc's answers too: the checks do not depend on the C library.
    _, out_nolibc, _ = run(builds("probe", "ukl").images.directory)
    assert probe_lines(out_nolibc) == probe_lines(out_ukl), (out_nolibc, out_ukl)



def _undefined(path: Path) -> set[str]:
    out = subprocess.run(["nm", "-u", str(path)], capture_output=True, text=True, check=True)
    return {ln.split()[-1] for ln in out.stdout.splitlines() if ln.strip() and ":" not in ln}


def test_probe_on_musl_with_shortcuts(builds: Builds) -> None:
    """musl built with -DUKL_SHORTCUTS (musl patches 0005, 0007): read/write/send/recv,
    readv/writev, sendmsg/recvmsg, accept and epoll reach the kernel's ukl_sc_* entry
    points from inside libc, and every answer stays the same."""
    plain = builds("probe", "ukl", libc="musl")
    fast = builds("probe", "ukl", libc="musl", shortcuts="true")
    assert fast.images.manifest["app"]["shortcuts"] is True
    assert fast.kernel.build_dir == plain.kernel.build_dir  # the same kernel, relinked
    shortcuts = {f"ukl_sc_{c}" for c in ("read", "write", "sendto", "recvfrom", "accept4",
                                         "readv", "writev", "sendmsg", "recvmsg", "epoll_wait",
                                         "epoll_ctl")}
    assert shortcuts <= _undefined(fast.app.path)
    assert not shortcuts & _undefined(plain.app.path)
    rc_plain, out_plain, err_plain = run(plain.images.directory)
    rc, out, err = run(fast.images.directory)
    assert "read(socket): ok" in out and "recv(udp, empty datagram): ok" in out, out + err
    assert probe_lines(out) == probe_lines(out_plain), (out, out_plain)
    assert "FAIL" not in out and rc == 0 and rc_plain == 0, (out, err, err_plain)

def test_musl_threads_tls_and_fp_in_ring0_on_2_vcpus(builds: Builds) -> None:
    rc, out, err = run(builds("probe", "ukl", libc="musl").images.directory, "--smp", "2",
                       "--kernel-log", "--", "threads", timeout=240)
    for line in ("threads: syscalls + FP math: ok", "threads: tls, errno, malloc, mutex + condvar: ok",
                 "tls of the main thread untouched: ok", "clock advances over nanosleep(1 ms): ok",
                 # read in ring 0 without a system call (kernel patch 0018), and not
                 "gettimeofday() and time() agree with REALTIME: ok",
                 "clock_gettime(BOOTTIME) >= MONOTONIC: ok",
                 "clock_gettime(PROCESS_CPUTIME_ID) runs: ok",
                 "clock_gettime(no such clock) fails with EINVAL: ok"):
        assert line in out, out + err
    assert "probe: threads (CPL 0)" in out, out + err
    skip_if_clocks_uncalibrated(out)
    assert "atexit handler: ran" in out and "FAIL" not in out and rc == 0, out + err


@pytest.mark.parametrize("mode", ["ukl", "user"])
def test_guest_wall_clock_agrees_with_the_host(builds: Builds, mode: str) -> None:
    """hostclock= (kernel patch 0015) + a paused start resumed at that time: within 50 ms.

    Each line is stamped when it arrives on the host; serial and pipe latency only
    add, so the smallest difference is the clock's error (plus that latency).
    """
    image = builds("probe", mode, libc="musl").images.directory
    proc = subprocess.Popen([sys.executable, "-m", "ukl_build", "run", str(image), "--timeout",
                             "120", "--kernel-log", "--", "wallclock"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    diffs = []
    calibration_failed = False
    try:
        for line in proc.stdout:
            arrived = time.time()
            calibration_failed |= tsc_calibration_failed(line)
            if m := re.search(r"probe: wallclock (\d+\.\d+)", line):
                diffs.append(arrived - float(m.group(1)))
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert len(diffs) == 5, err
    assert not calibration_failed, err  # the runner hands the kernel the TSC's frequency
    # QEMU may take the resume late on a loaded host (the runner says by how much, at
    # most): the guest's clock may then be behind by up to that, and no more.
    late = re.search(r"QEMU started up to (\d+) ms late", err)
    behind = int(late.group(1)) / 1000 if late else 0.0
    assert -0.05 < min(diffs) < behind + 0.05, (diffs, err)


def test_guest_clock_is_the_tsc_on_a_loaded_host(builds: Builds) -> None:
    """Three busy processes on the host's 2 cores, as on a CI runner or a busy
    hypervisor.  The kernel used to calibrate the TSC against the PIT, fail when its
    vCPU was descheduled, mark the TSC unstable and live on refined-jiffies (Redis's
    TIME in 4-24 ms steps); handed the TSC's frequency by the runner (tsc_early_khz=,
    from the host), it runs on the TSC with microsecond steps, loaded or not."""
    image = builds("probe", "ukl", libc="musl").images.directory
    hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(3)]
    try:
        time.sleep(1)  # the load is there before QEMU starts
        _, out, err = run(image, "--kernel-log", "--", "threads", timeout=300)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    text = out + err
    assert not tsc_calibration_failed(text), text[-3000:]
    assert "tsc_early_khz=" in text  # the command line, in the kernel's log
    assert re.search(r"clocksource: Switched to clocksource tsc(-early)?\n", text), text[-3000:]
    assert "clock_gettime(MONOTONIC) steps < 100 us (median of 101): ok" in text, out
