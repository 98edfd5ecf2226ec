"""The benchmark harness with tiny parameters: it builds, boots, measures and reports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.harness import APPS, Context, alternate, boot_to_line, median, percentile
from benchmarks.protections import VARIANTS
from benchmarks.stock import debian_cloud_kernel, server_initramfs, stock_image_dir
from ukl_build.cache import Cache
from ukl_build.imagefiles import image_files
from ukl_build.kconfig import parse_fragment
from ukl_build.launcher.options import RunOptions
from ukl_build.pipeline import build
from ukl_build.settings import load_settings

from conftest import Builds, booted

REPO = Path(__file__).resolve().parent.parent


def test_alternate_runs_variants_in_turn() -> None:
    order: list[str] = []
    samples = alternate({"a": lambda: order.append("a") or 1.0,
                         "b": lambda: order.append("b") or 2.0}, rounds=3)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert samples == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}
    assert median([3, 1, 2]) == 2 and percentile([1, 2, 3, 4], 0.99) == 4


def test_user_baseline_takes_ukl_modes_mitigations() -> None:
    # "The UKL configuration minus CONFIG_UKL": UKL mode's choice of mitigations (off by
    # default), and with them what the ukl recipe takes back (page-table isolation).
    ukl = {o.name for o in parse_fragment((REPO / "recipes/ukl.config").read_text(), "u")[0]
           if o.value == "n"}
    mitigations = {o.name for o in
                   parse_fragment((REPO / "recipes/mitigations.config").read_text(), "m")[0]
                   if o.value != "n"}
    assert ukl and ukl <= mitigations
    cs = Context.config_settings(REPO / "example_apps/hello", "user")
    assert cs["mitigations"] == "false"
    assert Context.config_settings(REPO / "example_apps/hello", "user",
                                   {"mitigations": "true"})["mitigations"] == "true"


def test_baseline_decides_the_user_mode_kernel(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, str]] = []
    monkeypatch.setattr("benchmarks.harness.build",
                        lambda project, cs, **kw: seen.append(cs) or object())
    for baseline in ("ukl", "app"):
        ctx = Context(work=tmp_path / baseline, cache=Cache(tmp_path / "cache"), baseline=baseline)
        ctx.build("hello", "user")
        ctx.build("hello", "ukl")
        ctx.build("sysbench", "user")
    assert seen[0]["recipes"] == "server;net;virtio-net;storage;microvm"
    assert seen[0]["mitigations"] == "false"
    assert seen[1] == {"mode": "ukl"}
    assert seen[2]["recipes"] == "server;net;virtio-net;storage;microvm"  # server named once
    assert seen[3:] == [{"mode": "user"}, {"mode": "ukl"}, {"mode": "user"}]


def test_series_reaches_every_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--series 6.1,6.12: each series' Context asks every build for its kernel.version,
    and notes the command with it."""
    seen: list[dict[str, str]] = []
    monkeypatch.setattr("benchmarks.harness.build",
                        lambda project, cs, **kw: seen.append(cs) or object())
    ctx = Context(work=tmp_path, cache=Cache(tmp_path / "cache"), kernel_version="6.12")
    ctx.build("sysbench", "ukl", shortcuts="true")
    ctx.build("sysbench", "user")
    assert [cs["kernel.version"] for cs in seen] == ["6.12", "6.12"]
    assert seen[0] == {"mode": "ukl", "kernel.version": "6.12", "shortcuts": "true"}
    assert "-C kernel.version=6.12" in ctx.commands[1] and "-C mitigations=false" in ctx.commands[1]


@pytest.mark.kernel
def test_harness_quick(cache, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        # 50,000 calls: the guest clock ticks every 4 ms under TCG (jiffies), and
        # 2,000 getppid calls often fit inside one tick and measure 0 ns.
        # --baseline app: user mode on the apps' own configurations, kernels the suite
        # builds anyway (the "ukl" baseline's settings are checked without a kernel above).
        # (The boot suite is not run here: its timing and the profiler run on the suite's
        # images below.)
        [sys.executable, "-m", "benchmarks", "syscall", "--quick", "--iterations", "50000",
         "--baseline", "app", "--work", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
        env={**os.environ, "UKL_BUILD_CACHE": str(cache.root)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    res = report["results"]
    getppid = res["syscall"]["per_call"]["getppid"]
    assert getppid["ukl_ns"] > 0 and getppid["user_ns"] > 0 and getppid["ratio_ukl_over_user"] > 0
    assert getppid["shortcuts_ns"] > 0 and getppid["ratio_shortcuts_over_user"] > 0
    # Instruction counts (-icount) are exact: the shortcut runs fewer than the syscall path.
    assert 0 < getppid["shortcuts_instructions"] < getppid["ukl_instructions"] \
        < getppid["user_instructions"]
    # Debian's cloud kernel beside them, running the user-mode program (benchmarks/stock.py)
    assert res["syscall"]["debian_cloud_kernel"] == "measured"
    assert getppid["debian-cloud_instructions"] > getppid["shortcuts_instructions"]
    assert "python -m ukl_build build benchmarks/apps/sysbench -C mode=ukl -C shortcuts=true" \
        in report["commands"]
    # --baseline app: user mode as -C mode=user builds it, on the app's own recipes
    assert report["baseline"] == "app"
    assert "python -m ukl_build build benchmarks/apps/sysbench -C mode=user" in report["commands"]
    # 64-byte TCP round trips over loopback: the network stack's cost, counted exactly
    assert res["syscall"]["per_call"]["tcp_roundtrip_64B"]["user_instructions"] > 1000
    assert "ratio_ukl_over_user" in proc.stdout



@pytest.mark.kernel
def test_boot_timing_and_guest_profiler(builds: Builds) -> None:
    """What the boot suite measures (QEMU start to the app's first line, bzImage and PVH)
    and the guest profiler, on hello's direct-boot image (the e2e tests' pvh build)."""
    images = builds("hello", "ukl", formats="bzimage;pvh").images
    pattern = r"Hello, .* from a unikernel"
    for fmt in ("bzimage", "pvh"):
        seconds = boot_to_line(images.directory, dict(images.manifest),
                               RunOptions(accel="tcg", image=fmt), pattern)
        assert 0 < seconds < 60, (fmt, seconds)
    prof = subprocess.run([sys.executable, "-m", "benchmarks.profile", str(images.directory),
                           "--until", "exit status", "--timeout", "120"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert prof.returncode == 0, prof.stdout + prof.stderr
    top = prof.stdout.split("# top functions")[1].split("# timeline")[0]
    assert re.search(r"^\s+\d+\.\d%\s+\d+\s+\S+$", top, re.M), prof.stdout
    assert "Hello, world, from a unikernel! (CPL 0)" in prof.stdout


def test_report_renders_every_section() -> None:
    from benchmarks.report import render

    report = {
        "command": "python -m benchmarks all", "rounds": 3, "commands": ["python -m ukl_build build x"],
        "machine": {"cpus": 2, "accel": "tcg", "kernel": "6.1"},
        "results": {
            "syscall": {"per_call": {"getppid": {"ukl_ns": 1.0, "shortcuts_ns": 0.2, "user_ns": 2.0,
                                                 "ratio_ukl_over_user": 0.5,
                                                 "ratio_shortcuts_over_user": 0.1}}},
            "boot_to_first_line_s": {"ukl": 1.0, "user": 1.2, "ratio_ukl_over_user": 0.83},
            "bzimage_bytes": {"hello-ukl": 1},
            "formats": {"bytes": {"hello": {"bzimage": 1, "pvh": 2, "efi": 3, "disk": 4}},
                        "boot_to_first_line_s": {"hello-bzimage": 0.5, "hello-pvh": 0.4,
                                                 "hello-efi": 5.0, "hello-disk": 5.5,
                                                 "hello-ratio_disk_over_bzimage": 11.0}},
            "httpd_min_memory_mib": {"ukl": 20},
            "httpd": {"connections": 4, "duration_s": 5, "bodies": {"64B": {
                "ukl_req_per_s": 2, "user_req_per_s": 1, "ratio_req_per_s_ukl_over_user": 2.0,
                "ukl_p50_ms": 1, "ukl_p99_ms": 2, "user_p50_ms": 1, "user_p99_ms": 3}}},
            "redis": {"clients": 50, "requests": 10, "rounds": 1,
                      "image_bytes": {"ukl": 3, "user": 4},
                      "boot_to_ready_s": {"ukl": 1.0, "user": 1.25},
                      "min_memory_mib": {"ukl": 20, "user": 21},
                      **{f"pipeline_{p}": {**{f"{m}_{t}_{k}": 1.5 for m in ("ukl", "user")
                                              for t in ("SET", "GET")
                                              for k in ("rps", "p50_ms", "p99_ms")},
                                           "SET_ratio_rps_ukl_over_user": 1.2}
                         for p in (1, 16)}},
            "build": {"noop_ukl_s": 0.5},
            "farm": {**{name: {"total_s": 10.0, "make_s": 5.0, "compiles": 600, "local_hits": 1,
                               "remote_hits": 590, "misses": 9}
                        for name in ("cold", "warm_remote", "local_ccache")},
                     "remote_hit_rate": 0.983, "make_ratio_warm_remote_over_cold": 0.2,
                     "make_ratio_local_ccache_over_cold": 0.1},
        },
    }
    md = render(report)
    assert "| hello | 1 | 2 | 3 | 4 | 0.5 | 0.4 | 5.0 | 5.5 | 11.0 |" in md
    for heading in ("System calls", "Boot", "bzImage size", "Image formats", "Smallest guest memory", "httpd",
                    "Redis", "Rebuilds", "Kernel build: cold vs remote store"):
        assert f"### {heading}" in md
    assert "| getppid | 1.0 | 0.2 | 2.0 | 0.5 | 0.1 |" in md
    assert "| QEMU start to ready (s) | 1.0 | 1.25 |" in md
    assert "| pipeline 16: SET ukl / user | 1.2 |" in md
    assert "| fresh runner, warm remote store | 10.0 | 5.0 | 0.2 | 600 | 1 | 590 | 9 |" in md
    assert "Remote hit rate of the fresh runner: 98.3%." in md


@pytest.mark.kernel
@pytest.mark.xdist_group("redis-user")  # with test_redis.py's user-mode Redis (conftest.py)
def test_redis_on_debian_cloud_kernel(builds: Builds, cache: Cache, tmp_path: Path) -> None:
    """The benchmarks' stock-kernel column: the user-mode Redis as /init on Debian's cloud
    kernel, whose virtio-net is a module (benchmarks/stock.py, benchmarks/apps/netinit)."""
    kernel = debian_cloud_kernel(tmp_path)
    if kernel is None:
        pytest.skip("apt cannot give linux-image-cloud-amd64 on this machine")
    redis = builds("redis", "user")
    project = tmp_path / "netinit"
    shutil.copytree(REPO / "benchmarks" / "apps" / "netinit", project)
    netinit = build(project, {"mode": "user"}, cache=cache)
    assert netinit.kernel.build_dir == redis.kernel.build_dir  # no kernel of its own
    cpio = server_initramfs(kernel, netinit.app.path, redis.app.path,
                            redis.kernel.build_dir / "usr" / "gen_init_cpio",
                            tmp_path / "initramfs.cpio", image_files(redis.settings))
    image = stock_image_dir(redis.images.directory, kernel, tmp_path / "image")
    with booted(image, "--machine", "q35", "--qemu-arg=-initrd", f"--qemu-arg={cpio}",
                "--cmdline", "rdinit=/init", forward=[6379], timeout=300) as vm:
        port = vm.port(6379)
        deadline = time.monotonic() + 120
        while True:
            ping = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                                  text=True, timeout=30)
            if ping.stdout.strip() == "PONG":
                break
            assert time.monotonic() < deadline and vm.running, "no PONG"
            time.sleep(0.5)
        info = subprocess.run(["redis-cli", "-p", str(port), "INFO", "server"],
                              capture_output=True, text=True, timeout=30).stdout
        release = kernel.modules.name
        assert f"os:Linux {release} x86_64" in info, info
        assert "redis_version:7.0.15" in info
        bench = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "10", "-n", "2000",
                                "-t", "set,get", "--csv"], capture_output=True, text=True,
                               timeout=300)
        assert bench.returncode == 0 and '"GET"' in bench.stdout, bench.stdout + bench.stderr
        assert "netinit:" not in vm.console, vm.console  # every module loaded, eth0 configured
        # the append-only file in /data, a directory of the initramfs here (no volume=)
        persistence = subprocess.run(["redis-cli", "-p", str(port), "INFO", "persistence"],
                                     capture_output=True, text=True, timeout=30).stdout
        assert "aof_enabled:1" in persistence, persistence


def test_protection_variants_are_valid_ukl_builds() -> None:
    # Each variant is one option (group) against the default, as settings a build accepts;
    # options the kernel turns off at boot need no kernel of their own.
    assert next(iter(VARIANTS)) == "default" and VARIANTS["default"].settings == {}
    for name, v in VARIANTS.items():
        assert not (v.settings and v.cmdline), name
        for app in ("sysbench", "redis"):
            s = load_settings(APPS[app], {"mode": "ukl", **v.settings})
            assert s.mode == "ukl", name
    kernels = {tuple(sorted(v.settings.items())) for v in VARIANTS.values()}
    assert len(kernels) == len([v for v in VARIANTS.values() if not v.cmdline])


def test_loadgen_checks_every_answer() -> None:
    # A fake memcached that stores one value, and a fake httpd; a wrong answer fails.
    import http.server
    import socketserver
    import threading

    from benchmarks import loadgen

    store: dict[bytes, bytes] = {}

    class Memcached(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while line := self.rfile.readline():
                words = line.split()
                if words[0] == b"set":
                    store[words[1]] = self.rfile.read(int(words[4]) + 2)[:-2]
                    self.wfile.write(b"STORED\r\n")
                elif words[1] in store:
                    value = store[words[1]]
                    self.wfile.write(b"VALUE %s 0 %d\r\n%s\r\nEND\r\n"
                                     % (words[1], len(value), value))
                else:
                    self.wfile.write(b"END\r\n")

    class Http(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = b"y" * int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    servers = [socketserver.ThreadingTCPServer(("127.0.0.1", 0), Memcached),
               http.server.ThreadingHTTPServer(("127.0.0.1", 0), Http)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    mc, web = (s.server_address[1] for s in servers)
    try:
        assert loadgen.main(["memcached-get", "--port", str(mc), "-n", "20"]) == 0
        assert loadgen.main(["memcached-set", "--port", str(mc), "-n", "20", "--size", "3"]) == 0
        assert store == {b"key:0": b"xxx"}
        assert loadgen.main(["http", "--port", str(web), "-n", "20"]) == 0
        store[b"key:0"] = b"wrong"  # get sets the key first: answers stay right
        assert loadgen.main(["memcached-get", "--port", str(mc), "-n", "2"]) == 0
        assert loadgen.main(["http", "--port", str(mc), "-n", "1"]) == 1  # not HTTP
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


def test_per_request_loads_name_known_apps_and_their_ports() -> None:
    from benchmarks.per_request import LOADS

    for name, load in LOADS.items():
        assert load.app in APPS, name
        forwards = load_settings(APPS[load.app]).run.forward
        assert any(f.endswith(f":{load.guest_port}") for f in forwards), (name, forwards)
        assert "{port}" in load.ready and "{requests}" in load.load, name
