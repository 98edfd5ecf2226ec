"""Linux 6.12: kernel_patches/linux-6.12 on Debian's linux-source-6.12 (QEMU TCG).

The rest of the suite runs on the default series, 6.1.  Here, on 6.12, what that
run does not prove for this series: its patches at work (the app in ring 0, hello
and httpd; the ring-0 probes, system calls, signals, threads, TLS, FPU, faults and
shortcuts, giving the answers they give on 6.1; Redis on musl), on one kernel
build: every example's configuration in UKL mode.  The module stays on one worker.

User mode on 6.12 (the series applied, CONFIG_UKL off) is the build farm's kernel
(tests/test_farm.py: hello and httpd as /init there, no configuration of its own);
what the default user-mode recipes ask of 6.12 (hardened's and mitigations'
overlays) is resolved and checked below without a build.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ukl_build.cache import Cache
from ukl_build.context import BuildContext
from ukl_build.kconfig import ConfigRequest, configure, read_config
from ukl_build.pipeline import prepare_tree
from ukl_build.progress import Reporter
from ukl_build.settings import load_settings

from conftest import (
    Builds,
    booted,
    check_httpd,
    copy_example,
    probe_lines,
    redis_cli,
    redis_ready,
    skip_if_clocks_uncalibrated,
)
from conftest import run_image as run

pytestmark = pytest.mark.kernel

SERIES = {"kernel.version": "6.12"}


def _sbom_property(image_dir: Path, name: str) -> str:
    sbom = json.loads((image_dir / "sbom.cdx.json").read_text())
    kernel = next(c for c in sbom["components"] if c["name"] == "linux")
    return next(p["value"] for p in kernel["properties"] if p["name"] == name)


def test_hello_in_ring0_records_the_series(builds: Builds) -> None:
    images = builds("hello", "ukl", **SERIES).images
    kernel = images.manifest["kernel"]
    assert kernel["release"].startswith("6.12.") and kernel["series"] == "linux-6.12"
    assert kernel["source"]["package"] == "linux-source-6.12"
    assert kernel["patches"][0]["name"].startswith("0001-x86-ukl-add-CONFIG_UKL")
    # hardened's 6.12 overlay follows it (SLUB_TINY off, DEBUG_CREDENTIALS gone)
    assert kernel["recipes"][1:3] == ["hardened", "linux-6.12/hardened"]
    assert _sbom_property(images.directory, "ukl-build:patch-series") == "linux-6.12"
    config = (images.directory / kernel["config"]["file"]).read_text()
    assert "CONFIG_UKL=y" in config and "# CONFIG_SLUB_TINY is not set" in config
    assert "CONFIG_X86_FRED" not in config.replace("# CONFIG_X86_FRED is not set", "")
    # 6.12's Kconfig records rustc's version: never the host's (patches.UNDECLARED_TOOLS)
    assert "CONFIG_RUSTC_VERSION=0\n" in config and "CONFIG_PAHOLE_VERSION=0\n" in config
    rc, out, err = run(images.directory)
    assert "Hello, world, from a unikernel! (CPL 0)" in out, err
    assert rc == 3, err


def test_httpd_serves_in_ring0(builds: Builds) -> None:
    check_httpd(builds("httpd", "ukl", **SERIES).images.directory, requests=400)


def test_user_mode_configuration_resolves_with_its_overlays(cache: Cache, tmp_path: Path) -> None:
    """The user-mode kernel every example gets by default on 6.12 (hardened and
    mitigations, each with its 6.12 overlay), resolved (tinyconfig + recipes +
    olddefconfig and the check of every option) without building it."""
    settings = load_settings(copy_example("httpd", tmp_path), {"mode": "user", **SERIES})
    # A Rust toolchain and pahole on PATH (fakes that give versions): the configuration
    # must not record them (patches.UNDECLARED_TOOLS).
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for tool, version in (("rustc", "rustc 1.95.0 (fake)"), ("pahole", "v1.25")):
        (fakes / tool).write_text(f"#!/bin/sh\necho '{version}'\n")
        (fakes / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}"}
    with Reporter(None) as r:
        tree = prepare_tree(settings, cache, r)
        config = configure(tree, ConfigRequest.of(settings), BuildContext(cache, r, env))
    assert config.recipes[:5] == ("base", "hardened", "linux-6.12/hardened", "mitigations",
                                  "linux-6.12/mitigations")
    values = read_config(config.path)
    assert values["MITIGATION_PAGE_TABLE_ISOLATION"] == "y" and values["MITIGATION_SLS"] == "y"
    assert values["CPU_MITIGATIONS"] == "y" and "UKL" not in values and "SLUB_TINY" not in values
    assert values["SLAB_FREELIST_HARDENED"] == "y"
    assert values["RUSTC_VERSION"] == "0" and values["PAHOLE_VERSION"] == "0"
    # UKL mode with mitigations: the ukl recipe's overlay takes page-table isolation
    # back by its 6.12 name, as the ukl recipe does on 6.1.
    settings = load_settings(settings.project_dir, {"mitigations": "true", **SERIES})
    with Reporter(None) as r:
        config = configure(tree, ConfigRequest.of(settings), BuildContext(cache, r, dict(os.environ)))
    assert config.recipes[-1] == "linux-6.12/ukl"
    values = read_config(config.path)
    assert values["UKL"] == "y" and values["CPU_MITIGATIONS"] == "y"
    assert "MITIGATION_PAGE_TABLE_ISOLATION" not in values


def test_probe_gives_the_answers_it_gives_on_6_1(builds: Builds) -> None:
    rc, out, err = run(builds("probe", "ukl", **SERIES).images.directory)
    rc_61, out_61, _ = run(builds("probe", "ukl").images.directory)
    assert "probe: syscalls (CPL 0)" in out, out + err
    assert "kill(self, SIGUSR1): ok" in out and "sigwaitinfo: ok" in out, out
    assert probe_lines(out) == probe_lines(out_61), (out, out_61)
    assert "FAIL" not in out and rc == 0 and rc_61 == 0, out + err


def test_musl_with_shortcuts_threads_tls_and_fp_on_2_vcpus(builds: Builds) -> None:
    image = builds("probe", "ukl", libc="musl", shortcuts="true", **SERIES).images.directory
    rc, out, err = run(image)
    assert "read(socket): ok" in out and "epoll_wait(pong): ok" in out, out + err
    assert "FAIL" not in out and rc == 0, out + err
    rc, out, err = run(image, "--smp", "2", "--kernel-log", "--", "threads", timeout=240)
    for line in ("threads: syscalls + FP math: ok",
                 "threads: tls, errno, malloc, mutex + condvar: ok",
                 "tls of the main thread untouched: ok", "atexit handler: ran"):
        assert line in out, out + err
    assert "probe: threads (CPL 0)" in out, out + err
    # The clock checks need the TSC and APIC timer calibrated, which a loaded host can
    # spoil; the thread checks above cannot fail so.
    skip_if_clocks_uncalibrated(out)
    assert "FAIL" not in out and rc == 0, out + err


@pytest.mark.parametrize(("probe", "report"), [
    ("null", "NULL pointer dereference"),
    ("overflow", "ukl: application stack overflow in ukl_app_overflow"),
])
def test_faults_end_the_vm_with_a_report(builds: Builds, probe: str, report: str) -> None:
    rc, out, err = run(builds("probe", "ukl", **SERIES).images.directory, "--", probe,
                       timeout=90)
    assert rc not in (0, 124), out + err
    assert report in out, out


def test_redis_on_musl_in_ring0(builds: Builds) -> None:
    result = builds("redis", "ukl", **SERIES)
    assert result.images.manifest["app"]["libc"] == "musl"
    with booted(result.images.directory, forward=[6379], timeout=600) as vm:
        port = redis_ready(vm)

        def ask(*args: str) -> str:
            reply = redis_cli(port, *args)
            assert reply.returncode == 0, reply.stderr
            return reply.stdout.strip()

        assert "os:Linux 6.12." in ask("INFO", "server")
        assert ask("SET", "k", "v") == "OK" and ask("GET", "k") == "v"
        assert ask("INCRBY", "n", "42") == "42"
        bench = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "10", "-n", "2000",
                                "-t", "set,get", "-q"], capture_output=True, text=True,
                               timeout=300)
        assert bench.returncode == 0, bench.stderr
        assert "SET:" in bench.stdout and "GET:" in bench.stdout, bench.stdout
