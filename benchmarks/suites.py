"""The benchmarks.  Each takes the Context, records into ctx.results, returns nothing."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import stock
from benchmarks.harness import (
    APPS,
    Context,
    alternate,
    boot_to_line,
    free_port,
    median,
    percentile,
    run_capture,
    stop_vms,
)
from benchmarks.stock import debian_cloud_kernel, server_initramfs, stock_image_dir
from ukl_build.cache import Cache
from ukl_build.errors import UklError
from ukl_build.files import tree_size
from ukl_build.imagefiles import image_files
from ukl_build.kbuild import bzimage_kernel, initramfs_list
from ukl_build.launcher.manifest import load_manifest
from ukl_build.pipeline import build
from ukl_build.progress import Reporter
from ukl_build.resources import runtime_dir

MODES = ("ukl", "user")
# The variants the speed comparisons run: name -> (mode, extra settings).
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "ukl": ("ukl", {}),
    "shortcuts": ("ukl", {"shortcuts": "true"}),
    "user": ("user", {}),
}


def _variant_builds(ctx: Context, app: str) -> dict[str, Any]:
    return {name: ctx.build(app, mode, **extra) for name, (mode, extra) in VARIANTS.items()}


def syscall(ctx: Context, iterations: int) -> None:
    """ns per call of cheap system calls: UKL, UKL with shortcuts, user mode (one kernel
    configuration), and the user-mode program as /init on Debian's cloud kernel."""
    builds = _variant_builds(ctx, "sysbench")
    runs: dict[str, Callable[[int, bool], dict[str, float]]] = {
        name: (lambda n, icount, name=name: sysbench(ctx, builds[name].images.directory, n,
                                                      icount, name))
        for name in VARIANTS}
    cloud = _sysbench_on_debian(ctx, builds["user"])
    if cloud is not None:
        runs["debian-cloud"] = cloud
    ctx.note(f"python -m ukl_build run <sysbench image> --accel {ctx.accel} -- {iterations}")
    samples = alternate({name: (lambda run=run: run(iterations, False))
                         for name, run in runs.items()}, ctx.rounds)
    counted = max(iterations // 10, 100)
    ctx.note(f"python -m ukl_build run <sysbench image> --accel tcg --qemu-arg=-icount "
             f"--qemu-arg=shift=0 -- {counted}")
    instructions = {name: run(counted, True) for name, run in runs.items()}
    table = {}
    for bench in samples["ukl"][0]:
        ns = {name: median(s[bench] for s in samples[name]) for name in runs}
        if not all(ns.values()):  # the guest clock ticks every 4 ms (jiffies) under TCG
            raise RuntimeError(f"syscall {bench}: a variant measured 0 ns per call ({ns}); "
                               f"{iterations} calls took less than one guest clock tick: "
                               "use more --iterations")
        insn = {name: instructions[name][bench] for name in runs}
        table[bench] = {**{f"{name}_ns": round(v, 1) for name, v in ns.items()},
                        **{f"ratio_{name}_over_user": round(ns[name] / ns["user"], 3)
                           for name in runs if name != "user"},
                        "ratio_shortcuts_over_ukl": round(ns["shortcuts"] / ns["ukl"], 3),
                        **{f"{name}_instructions": round(v) for name, v in insn.items()},
                        **{f"instructions_ratio_{name}_over_user": round(insn[name] / insn["user"], 3)
                           for name in runs if name != "user"}}
    ctx.results["syscall"] = {"iterations": iterations, "icount_iterations": counted,
                              "rounds": ctx.rounds, "per_call": table,
                              "debian_cloud_kernel": "measured" if cloud is not None
                              else f"not measured: apt cannot give {stock.PACKAGE} here"}


def _sysbench_on_debian(ctx: Context,
                        user: Any) -> Callable[[int, bool], dict[str, float]] | None:
    """The user-mode sysbench as /app on Debian's cloud kernel, as a sample function;
    None where apt cannot give the kernel.  It boots as the servers do (netinit brings
    up lo, which the TCP round trip needs, and a NIC, which netinit insists on: given
    here, since sysbench's own image has none)."""
    cloud, _ = on_debian_cloud(ctx, user, "sysbench")
    if cloud is None:
        return None

    def run(n: int, icount: bool) -> dict[str, float]:
        # Debian's kernel reports no exit status of ours: the figures are the proof of a run.
        return sysbench(ctx, cloud.directory, n, icount, "debian-cloud",
                        cmdline=f"{cloud.options['extra_cmdline']} panic=-1",
                        qemu_args=[*cloud.options["qemu_args"], "-nic",
                                   "user,model=virtio-net-pci"],
                        any_status=True, machine=cloud.options["machine"])

    return run


def sysbench(ctx: Context, image_dir: Path, n: int, icount: bool, name: str,
             cmdline: str = "", qemu_args: Sequence[str] = (), any_status: bool = False,
             **options: Any) -> dict[str, float]:
    """ns per call of each sysbench benchmark, ``n`` calls each.

    With -icount shift=0 the guest clock advances 1 ns per guest instruction, so the
    app's "ns per call" is instructions per call: exact, and immune to the host's noise
    (but blind to what an instruction costs: a syscall counts 1).
    """
    opts = ctx.options(args=[str(n)], timeout=900, extra_cmdline=cmdline,
                       qemu_args=[*qemu_args, *(["-icount", "shift=0"] if icount else [])],
                       **options)
    if icount:
        opts.accel = "tcg"  # -icount is a TCG feature, whatever --accel says
    status, out = run_capture(image_dir, opts)
    figures = {m.group(1): int(m.group(2)) / 1000.0
               for m in re.finditer(r"bench (\S+) (\d+)", out)}
    if (status != 0 and not any_status) or not figures:
        raise RuntimeError(f"sysbench ({name}) failed: {out[-2000:]}")
    return figures


def _initramfs_cpio(result: Any, dest: Path) -> Path:
    """The user-mode app's initramfs as a cpio, for booting another kernel with it.

    Made with the kernel's own gen_init_cpio from the app's binary (the build
    directory is shared by every app of that configuration).
    """
    listing = dest.with_suffix(".list")
    app = result.app.path
    listing.write_text(initramfs_list(str(app), str(runtime_dir() / "etc")))
    with open(dest, "wb") as out:
        subprocess.run([str(result.kernel.build_dir / "usr/gen_init_cpio"), str(listing)],
                       stdout=out, check=True)
    return dest


def extract_vmlinux(vmlinuz: Path, dest: Path) -> Path | None:
    """The ELF kernel inside a compressed kernel image (as the tree's scripts/extract-vmlinux)."""
    try:
        data = bzimage_kernel(vmlinuz, dict(os.environ), Reporter(None))
    except UklError:
        return None
    if not data.startswith(b"\x7fELF"):
        return None
    dest.write_bytes(data)
    return dest


def boot(ctx: Context) -> None:
    """QEMU start to the app's first line: UKL and user mode, bzImage and direct-boot (PVH)
    vmlinux, against Debian's cloud kernel with the same /init booted both ways."""
    hello = {m: ctx.build("hello", m) for m in MODES}
    # The pvh format adds nothing to a microvm kernel's configuration: same kernel, vmlinux exported.
    pvh = ctx.build("hello", "ukl", formats="bzimage;pvh")
    pattern = r"Hello, .* from a unikernel"
    variants = {m: (lambda m=m: boot_to_line(hello[m].images.directory, hello[m].images.manifest,
                                             ctx.options(), pattern)) for m in MODES}
    variants["ukl-pvh"] = lambda: boot_to_line(pvh.images.directory, pvh.images.manifest,
                                               ctx.options(image="pvh"), pattern)
    stock_kernel = debian_cloud_kernel(ctx.work)
    cloud = stock_kernel.vmlinuz if stock_kernel is not None else None
    tmp = Path(tempfile.mkdtemp(prefix="ukl-bench-"))
    res: dict[str, Any] = {}
    if cloud is not None:
        cpio = _initramfs_cpio(hello["user"], tmp / "initramfs.cpio")
        user = hello["user"].images
        for name, kernel in (("debian-cloud", cloud),
                             ("debian-cloud-pvh", extract_vmlinux(cloud, tmp / "vmlinux"))):
            if kernel is None:
                res[name] = "could not extract vmlinux (needs lz4/zstd/xz/gzip)"
                continue
            variants[name] = lambda kernel=kernel: boot_to_line(
                user.directory, user.manifest, ctx.options(), pattern, kernel=kernel, initrd=cpio,
                extra_append="rdinit=/init panic=-1")
    samples = alternate(variants, ctx.rounds)
    res.update({name: round(median(v), 3) for name, v in samples.items()})
    res["ratio_ukl_over_user"] = round(res["ukl"] / res["user"], 3)
    if "debian-cloud" in samples:
        res["ratio_ukl_over_debian_cloud"] = round(res["ukl"] / res["debian-cloud"], 3)
        res["ratio_ukl_pvh_over_debian_cloud"] = round(res["ukl-pvh"] / res["debian-cloud"], 3)
        res["debian_cloud_kernel"] = str(cloud)
    if "debian-cloud-pvh" in samples:
        res["ratio_ukl_pvh_over_debian_cloud_pvh"] = round(res["ukl-pvh"] / res["debian-cloud-pvh"], 3)
    if cloud is None:
        res["debian-cloud"] = f"not measured: apt cannot give {stock.PACKAGE} here"
    ctx.results["boot_to_first_line_s"] = res
    shutil.rmtree(tmp, ignore_errors=True)


def formats(ctx: Context) -> None:
    """Each image format of hello and httpd (UKL mode): its size, and QEMU start to the
    app's first line.  All four formats come from one kernel (the efi build's, which has
    the command line built in), booted on q35: only the boot path differs (-kernel
    bzImage, PVH vmlinux, OVMF loading the EFI application, OVMF booting the disk)."""
    apps = {"hello": r"Hello, .* from a unikernel", "httpd": r"httpd: listening on port"}
    all_formats = ("bzimage", "pvh", "efi", "disk")
    sizes: dict[str, dict[str, int]] = {}
    variants: dict[str, Callable[[], float]] = {}
    for app, pattern in apps.items():
        built = ctx.build(app, "ukl", formats=";".join(all_formats))
        images = built.images
        sizes[app] = {f: images.manifest["images"][f]["size"] for f in all_formats}
        for fmt in all_formats:
            variants[f"{app}-{fmt}"] = (
                lambda images=images, fmt=fmt, pattern=pattern: boot_to_line(
                    images.directory, dict(images.manifest),
                    ctx.options(machine="q35", image=fmt), pattern))
    samples = alternate(variants, ctx.rounds)
    boot_s = {name: round(median(v), 3) for name, v in samples.items()}
    for app in apps:
        boot_s[f"{app}-ratio_disk_over_bzimage"] = round(
            boot_s[f"{app}-disk"] / boot_s[f"{app}-bzimage"], 3)
    ctx.results["formats"] = {"bytes": sizes, "boot_to_first_line_s": boot_s}


def size(ctx: Context) -> None:
    """bzImage bytes per app and mode."""
    res = {}
    for app in ("hello", "httpd"):
        for m in MODES:
            res[f"{app}-{m}"] = ctx.build(app, m).images.manifest["images"]["bzimage"]["size"]
    ctx.results["bzimage_bytes"] = res


def _serves(result: Any, ctx: Context, memory: str) -> bool:
    port = free_port()
    opts = ctx.options(memory=memory, forward=[f"{port}:8080"], timeout=60)
    done: dict[str, Any] = {}
    t = threading.Thread(target=lambda: done.update(r=run_capture(result.images.directory, opts)),
                         daemon=True)
    t.start()
    deadline = time.monotonic() + 50
    ok = False
    while time.monotonic() < deadline and t.is_alive():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            ok = conn.getresponse().status == 200
            conn.close()
            break
        except OSError:
            time.sleep(0.5)
    stop_vms(port)
    t.join(timeout=30)
    return ok


def memory(ctx: Context) -> None:
    """The smallest -m (MiB) at which httpd boots and answers, bisected, per mode."""
    res = {}
    for m in MODES:
        result = ctx.build("httpd", m)
        res[m] = _smallest_memory(lambda memory, r=result: _serves(r, ctx, memory), lo=4)
    ctx.results["httpd_min_memory_mib"] = res


def _smallest_memory(serves: Callable[[str], bool], lo: int, hi: int = 256) -> int | None:
    """The smallest -m (MiB) in (lo, hi] at which ``serves`` holds, bisected; None if not at hi.

    ``lo`` is assumed to fail, ``hi`` is checked first.
    """
    if not serves(f"{hi}M"):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if serves(f"{mid}M"):
            hi = mid
        else:
            lo = mid
    return hi


def _load(port: int, path: str, connections: int, duration: float) -> dict[str, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + duration

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"req_per_s": len(latencies) / duration,
            "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000}


def httpd(ctx: Context, duration: float, connections: int, sizes: list[int]) -> None:
    """Keep-alive requests/s and latency through the forwarded port: UKL, shortcuts, user mode."""
    table = _http_rates(ctx, "httpd", {f"{size}B": f"/bytes/{size}" for size in sizes},
                        duration, connections)
    ctx.results["httpd"] = {"connections": connections, "duration_s": duration,
                            "rounds": ctx.rounds, "bodies": table}


def nginx(ctx: Context, duration: float, connections: int) -> None:
    """example_apps/nginx's static site, as httpd's: requests/s and latency, UKL, shortcuts,
    user mode (its instructions per request: per-request --load nginx-index)."""
    table = _http_rates(ctx, "nginx", {"index.html": "/", "site.css": "/css/site.css"},
                        duration, connections)
    ctx.results["nginx"] = {"connections": connections, "duration_s": duration,
                            "rounds": ctx.rounds, "paths": table}


def _http_rates(ctx: Context, app: str, paths: dict[str, str], duration: float,
                connections: int) -> dict[str, Any]:
    """Each of ``paths`` loaded on each variant of ``app``, alternating, by label."""
    results = _variant_builds(ctx, app)
    ports = {m: free_port() for m in VARIANTS}
    threads = {}
    for m in VARIANTS:  # all VMs up at once; the load alternates between them
        # The load visits each VM in turn: each lives through every variant's samples (x2 margin).
        busy = duration * len(VARIANTS) * len(paths) * ctx.rounds
        opts = ctx.options(forward=[f"{ports[m]}:8080"], timeout=2 * busy + 120)
        threads[m] = threading.Thread(target=run_capture, args=(results[m].images.directory, opts),
                                      daemon=True)
        threads[m].start()
    try:
        for m in VARIANTS:
            _wait_http(ports[m])
        table: dict[str, Any] = {}
        for label, path in paths.items():
            samples = alternate({m: (lambda m=m, path=path: _load(ports[m], path,
                                                                  connections, duration))
                                 for m in VARIANTS}, ctx.rounds)
            row = {}
            for m in VARIANTS:
                for k in ("req_per_s", "p50_ms", "p99_ms"):
                    row[f"{m}_{k}"] = round(median(s[k] for s in samples[m]), 2)
            for m in ("ukl", "shortcuts"):
                row[f"ratio_req_per_s_{m}_over_user"] = round(row[f"{m}_req_per_s"]
                                                              / row["user_req_per_s"], 3)
            table[label] = row
        return table
    finally:
        for m in VARIANTS:
            stop_vms(ports[m])


def _wait_http(port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"httpd on port {port} did not answer")


def build_times(ctx: Context, cold: bool) -> None:
    """No-op rebuild and app-only rebuild (and, with cold, a build from an empty cache)."""
    res: dict[str, Any] = {}
    for m in MODES:
        result = ctx.build("hello", m)
        project = result.settings.project_dir
        cs = ctx.config_settings(project, m)
        quiet = open(os.devnull, "w")  # noqa: SIM115
        t0 = time.monotonic()
        build(project, cs, cache=ctx.cache, stream=quiet)
        res[f"noop_{m}_s"] = round(time.monotonic() - t0, 2)
        src = project / "src/hello.c"
        original = src.read_text()
        # A change never built before (the image cache would otherwise serve it).
        # (a small number: a comparison gcc cannot fold away)
        unique = 100 + time.time_ns() % 100000
        src.write_text(original.replace("return 3;", f"return 3 + (argc > {unique});"))
        t0 = time.monotonic()
        build(project, cs, cache=ctx.cache, stream=quiet)
        res[f"app_only_{m}_s"] = round(time.monotonic() - t0, 2)
        src.write_text(original)
        build(project, cs, cache=ctx.cache, stream=quiet)
        quiet.close()
    if cold:
        with tempfile.TemporaryDirectory(prefix="ukl-cold-") as tmp:
            project = Path(tmp) / "hello"
            shutil.copytree(ctx.build("hello", "ukl").settings.project_dir, project,
                            ignore=shutil.ignore_patterns("build"))
            t0 = time.monotonic()
            build(project, {"mode": "ukl"}, cache=Cache(Path(tmp) / "cache"),
                  stream=open(os.devnull, "w"))  # noqa: SIM115
            res["cold_ukl_s"] = round(time.monotonic() - t0, 1)
    ctx.results["build"] = res


# Redis: UKL, UKL + shortcuts and user mode on one kernel configuration, and the same
# static user-mode Redis as /init on Debian's cloud kernel (benchmarks/stock.py).
REDIS_VARIANTS = {"ukl": ("ukl", {}), "shortcuts": ("ukl", {"shortcuts": "true"}),
                  "user": ("user", {})}
REDIS_READY = "Ready to accept connections"
# 10, not 50: with 50 clients QEMU's user-mode network (slirp) under TCG loses the
# guest side of some connections within the first second or so, and redis-benchmark
# stalls for good; on every kernel alike, Debian's cloud kernel on q35 included
# (measured 2026-11-27, docs/performance.md).
REDIS_CLIENTS = 10


@dataclass(frozen=True)
class Bootable:
    """An image directory and what its boots add to the run options."""
    directory: Path
    options: dict[str, Any] = field(default_factory=dict)
    symbols: Path | None = None  # the kernel's System.map, where it has no vmlinux of ours

    def run_args(self) -> list[str]:
        """What ``options`` add to ``python -m ukl_build run``'s command line."""
        args = [f"--qemu-arg={a}" for a in self.options.get("qemu_args", [])]
        if "machine" in self.options:
            args += ["--machine", self.options["machine"]]
        return args

    @property
    def manifest(self) -> dict[str, Any]:
        return load_manifest(self.directory)


def _redis_bench(port: int, requests: int, pipeline: int) -> dict[str, dict[str, float]]:
    """redis-benchmark (Debian's redis-tools) GET and SET: rps, p50, p99 per test."""
    argv = ["redis-benchmark", "-p", str(port), "-c", str(REDIS_CLIENTS), "-n", str(requests),
            "-P", str(pipeline), "-t", "set,get", "--csv"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit status {proc.returncode}: "
                           f"{proc.stderr.strip()[-500:]}")
    rows = [ln.replace('"', "").split(",") for ln in proc.stdout.splitlines() if ln.strip()]
    header, out = rows[0], {}
    for row in rows[1:]:
        rec = dict(zip(header, row, strict=False))
        out[rec["test"]] = {"rps": float(rec["rps"]), "p50_ms": float(rec["p50_latency_ms"]),
                            "p99_ms": float(rec["p99_latency_ms"])}
    return out


def _wait_redis(port: int, timeout: float = 120,
                alive: Callable[[], bool] = lambda: True) -> None:
    """Until Redis answers PING through the forward; RuntimeError if it does not in time
    or its VM ends first (a guest short of memory may also take a connection and never
    answer: each PING gets 10 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            proc = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                                  text=True, timeout=10, check=False)
            if proc.stdout.strip() == "PONG":
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"redis on port {port} did not answer PING")


@contextmanager
def _redis_vm(image: Bootable, ctx: Context, timeout: float, **opts: Any) -> Iterator[int]:
    """Boot Redis in the background with its port forwarded; yield the host port once
    it answers PING (RuntimeError if it does not in time); stop the VM on exit."""
    port = free_port()
    options = ctx.options(forward=[f"{port}:6379"], timeout=timeout, **image.options, **opts)
    t = threading.Thread(target=run_capture, args=(image.directory, options), daemon=True)
    t.start()
    try:
        _wait_redis(port, timeout=min(120, timeout - 10), alive=t.is_alive)
        yield port
    finally:
        stop_vms(port)
        t.join(timeout=30)


def _redis_serves(image: Bootable, ctx: Context, memory: str) -> bool:
    try:
        with _redis_vm(image, ctx, timeout=60, memory=memory):
            return True
    except RuntimeError:
        return False


def on_debian_cloud(ctx: Context, user: Any, app: str) -> tuple[Bootable | None, str]:
    """``user`` (a user-mode build of ``app``) as /app on Debian's cloud kernel, or None
    and why not."""
    kernel = debian_cloud_kernel(ctx.work)
    if kernel is None:
        return None, f"not measured: apt cannot give {stock.PACKAGE} here"
    netinit = ctx.build("netinit", "user")
    dest = ctx.work / f"{app}-debian-cloud"
    dest.mkdir(parents=True, exist_ok=True)
    cpio = server_initramfs(kernel, netinit.app.path, user.app.path,
                            user.kernel.build_dir / "usr" / "gen_init_cpio",
                            dest / "initramfs.cpio", image_files(user.settings))
    image = stock_image_dir(user.images.directory, kernel, dest / "image")
    ctx.note(f"qemu-system-x86_64 -M q35 -kernel {kernel.vmlinuz} -initrd <netinit + "
             f"{app} (user mode) + virtio modules> -append 'rdinit=/init ...' "
             "(benchmarks/stock.py)")
    # q35 (virtio-pci), as in a cloud: on microvm (no ACPI) this kernel cannot find the
    # virtio-mmio NIC, it was built without VIRTIO_MMIO_CMDLINE_DEVICES.
    return Bootable(image, {"qemu_args": ["-initrd", str(cpio)], "machine": "q35",
                            "extra_cmdline": "rdinit=/init"},
                    symbols=kernel.system_map), kernel.origin


def redis(ctx: Context, requests: int) -> None:
    """Redis 7.0.15 on musl: UKL, UKL + shortcuts, user mode, Debian's cloud kernel.

    redis-benchmark GET/SET with REDIS_CLIENTS clients, pipelining 1 and 16 (requests/s
    medians, p50/p99, ratios); bzImage size; QEMU start to "Ready to accept
    connections"; the smallest -m that answers PING.
    """
    results = {name: ctx.build("redis", mode, **extra)
               for name, (mode, extra) in REDIS_VARIANTS.items()}
    images = {name: Bootable(r.images.directory) for name, r in results.items()}
    res: dict[str, Any] = {"requests": requests, "clients": REDIS_CLIENTS, "rounds": ctx.rounds}
    cloud, res["debian_cloud_kernel"] = on_debian_cloud(ctx, results["user"], "redis")
    if cloud is not None:
        images["debian-cloud"] = cloud
    res["image_bytes"] = {m: b.manifest["images"]["bzimage"]["size"] for m, b in images.items()}
    boot = alternate({m: (lambda b=b: boot_to_line(b.directory, b.manifest,
                                                   ctx.options(**b.options), REDIS_READY))
                      for m, b in images.items()}, ctx.rounds)
    res["boot_to_ready_s"] = {m: round(median(v), 3) for m, v in boot.items()}
    for m in images:
        if m != "user":
            res["boot_to_ready_s"][f"ratio_{m}_over_user"] = round(
                res["boot_to_ready_s"][m] / res["boot_to_ready_s"]["user"], 3)
    # One VM at a time, booted afresh for each sample: two guests on two host cores
    # slow each other and QEMU's user-mode network, which drops connections then.
    for pipeline in (1, 16):
        ctx.note(f"redis-benchmark -p PORT -c {REDIS_CLIENTS} -n {requests} -P {pipeline} "
                 "-t set,get --csv")
        samples = alternate({m: (lambda b=b, pipeline=pipeline: _redis_sample(
            b, ctx, requests, pipeline)) for m, b in images.items()}, ctx.rounds)
        row: dict[str, float] = {}
        for m in images:
            for k in samples[m][0]:
                row[f"{m}_{k}"] = round(median(s[k] for s in samples[m]), 2)
        for test in ("SET", "GET"):
            for m in images:
                if m != "user":
                    row[f"{test}_ratio_rps_{m}_over_user"] = round(
                        row[f"{m}_{test}_rps"] / row[f"user_{test}_rps"], 3)
            if "debian-cloud" in images:
                row[f"{test}_ratio_rps_ukl_over_debian-cloud"] = round(
                    row[f"ukl_{test}_rps"] / row[f"debian-cloud_{test}_rps"], 3)
        res[f"pipeline_{pipeline}"] = row
    res["min_memory_mib"] = {
        m: _smallest_memory(lambda memory, b=b: _redis_serves(b, ctx, memory), lo=8)
        for m, b in images.items()}
    ctx.results["redis"] = res


def _redis_sample(image: Bootable, ctx: Context, requests: int, pipeline: int
                  ) -> dict[str, float]:
    with _redis_vm(image, ctx, timeout=900) as port:
        return _flatten(_redis_bench(port, requests, pipeline))


def _flatten(table: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{test}_{k}": v for test, row in table.items() for k, v in row.items()}


@contextmanager
def redis_store(work: Path) -> Iterator[str]:
    """A redis-server on 127.0.0.1 as ccache's remote store; killed when the block ends."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                             "--save", "", "--appendonly", "no", "--dir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_redis(port, timeout=20)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


_MAKE_DONE = re.compile(r"kbuild: done: \d+ steps in (\d+) s")
_CACHE_LINE = re.compile(r"compiler cache: (\d+) compiles: (\d+) local hits, (\d+) remote hits, "
                         r"(\d+) misses")


def _farm_build(project: Path, cache: Cache, settings: dict[str, str]) -> dict[str, float]:
    """One hello kernel build: wall clock, make's share, and what ccache did."""
    t0 = time.monotonic()
    with open(os.devnull, "w") as quiet:
        result = build(project, settings, cache=cache, stream=quiet)
    total = time.monotonic() - t0
    log = result.log.read_text()
    make, counts = _MAKE_DONE.search(log), _CACHE_LINE.search(log)
    if not result.kernel_built or make is None or counts is None:
        raise RuntimeError(f"{project}: no kernel build in {result.log}")
    compiles, local, remote, misses = (int(g) for g in counts.groups())
    return {"total_s": round(total, 1), "make_s": float(make.group(1)), "compiles": compiles,
            "local_hits": local, "remote_hits": remote, "misses": misses}


def farm(ctx: Context) -> None:
    """Kernel build from cold vs from a warm remote store (a fresh runner: empty cache)
    vs from a warm local ccache (build dir and trees evicted), hello in user mode."""
    with tempfile.TemporaryDirectory(prefix="ukl-farm-", dir=ctx.work) as tmp_s, \
            redis_store(Path(tmp_s)) as store:
        tmp = Path(tmp_s)
        project = tmp / "hello"
        shutil.copytree(APPS["hello"], project, ignore=shutil.ignore_patterns("build", "dist"))
        remote = {"mode": "user", "ccache.remote-storage": "<redis://127.0.0.1:PORT>"}
        ctx.note("python -m ukl_build build example_apps/hello "
                 + " ".join(f"-C {k}={v}" for k, v in remote.items())
                 + "  (empty cache; redis-server on 127.0.0.1)")
        runner1 = Cache(tmp / "runner1")
        settings = {"mode": "user", "ccache.remote-storage": store}
        cold = _farm_build(project, runner1, settings)  # fills the store
        info = subprocess.run(["redis-cli", "-u", store, "info", "memory"], capture_output=True,
                              text=True, check=True).stdout
        used = re.search(r"^used_memory:(\d+)", info, re.M)
        cold["store_mib"] = round(int(used.group(1)) / 2**20, 1) if used else -1
        kbuild = [p for p in (runner1.root / "kbuild").iterdir() if not p.name.startswith(".")]
        cold["kbuild_dir_mib"] = round(sum(tree_size(p) for p in kbuild) / 2**20, 1)

        def warm_remote() -> dict[str, float]:
            fresh = Cache(tmp / f"runner-{time.monotonic_ns()}")
            try:
                return _farm_build(project, fresh, settings)
            finally:
                fresh.clean()

        def local_hit() -> dict[str, float]:
            runner1.evict(0)  # everything but downloads and the compiler cache
            return _farm_build(project, runner1, {"mode": "user"})

        samples = alternate({"warm_remote": warm_remote, "local_ccache": local_hit}, ctx.rounds)
    res: dict[str, Any] = {"cold": cold}
    for name, runs in samples.items():
        res[name] = {k: median(r[k] for r in runs) for k in runs[0]}  # type: ignore[index]
    w = res["warm_remote"]
    res["remote_hit_rate"] = round(w["remote_hits"] / w["compiles"], 3)
    for name in ("warm_remote", "local_ccache"):
        res[f"make_ratio_{name}_over_cold"] = round(res[name]["make_s"] / cold["make_s"], 3)
        res[f"total_ratio_{name}_over_cold"] = round(res[name]["total_s"] / cold["total_s"], 3)
    ctx.results["farm"] = res


# The costs of `hardened` (docs/security.md): each pair is one app, one mode, built with
# and without it.  UKL mode for the servers (the default, and where the app is the
# kernel); hello in both modes (user mode as a user builds it: its own recipes, PTI on).
HARDENING = {"on": {}, "off": {"hardened": "false"}}


def hardening(ctx: Context, duration: float, connections: int, requests: int,
              iterations: int) -> None:
    """Image size, boot to first line, httpd and Redis requests/s, and instructions per
    system call (sysbench under -icount), with and without ``hardened``, side by side."""
    res: dict[str, Any] = {"rounds": ctx.rounds}
    hello = {(m, h): ctx.build("hello", m, baseline=False, **extra)
             for m in MODES for h, extra in HARDENING.items()}
    res["bzimage_bytes"] = {f"{m}-{h}": r.images.manifest["images"]["bzimage"]["size"]
                            for (m, h), r in hello.items()}
    pattern = r"Hello, .* from a unikernel"
    boot = alternate({f"{m}-{h}": (lambda r=r: boot_to_line(
        r.images.directory, r.images.manifest, ctx.options(), pattern))
        for (m, h), r in hello.items()}, ctx.rounds)
    res["boot_to_first_line_s"] = {k: round(median(v), 3) for k, v in boot.items()}
    for m in MODES:
        res["bzimage_bytes"][f"ratio_{m}_on_over_off"] = round(
            res["bzimage_bytes"][f"{m}-on"] / res["bzimage_bytes"][f"{m}-off"], 3)
        res["boot_to_first_line_s"][f"ratio_{m}_on_over_off"] = round(
            res["boot_to_first_line_s"][f"{m}-on"] / res["boot_to_first_line_s"][f"{m}-off"], 3)
    res["syscall_instructions"] = _hardening_syscalls(ctx, iterations)
    res["httpd"] = _hardening_httpd(ctx, duration, connections)
    res["redis"] = _hardening_redis(ctx, requests)
    ctx.results["hardening"] = res


def _hardening_syscalls(ctx: Context, iterations: int) -> dict[str, Any]:
    images = {h: ctx.build("sysbench", "ukl", **extra).images for h, extra in HARDENING.items()}
    counted = max(iterations // 10, 100)
    ctx.note(f"python -m ukl_build run <sysbench image> --accel tcg --qemu-arg=-icount "
             f"--qemu-arg=shift=0 -- {counted}")
    # Exact counts: one run each.
    per_call = {h: sysbench(ctx, image.directory, counted, True, f"hardened {h}")
                for h, image in images.items()}
    return {bench: {"on": round(per_call["on"][bench]), "off": round(per_call["off"][bench]),
                    "ratio_on_over_off": round(per_call["on"][bench] / per_call["off"][bench], 3)}
            for bench in per_call["on"]}


def _hardening_httpd(ctx: Context, duration: float, connections: int) -> dict[str, Any]:
    results = {h: ctx.build("httpd", "ukl", **extra) for h, extra in HARDENING.items()}
    ports = {h: free_port() for h in HARDENING}
    busy = duration * len(HARDENING) * ctx.rounds
    for h in HARDENING:  # both VMs up; the load alternates between them
        opts = ctx.options(forward=[f"{ports[h]}:8080"], timeout=2 * busy + 120)
        threading.Thread(target=run_capture, args=(results[h].images.directory, opts),
                         daemon=True).start()
    try:
        for h in HARDENING:
            _wait_http(ports[h])
        samples = alternate({h: (lambda h=h: _load(ports[h], "/bytes/64", connections, duration))
                             for h in HARDENING}, ctx.rounds)
    finally:
        for h in HARDENING:
            stop_vms(ports[h])
    row: dict[str, Any] = {"connections": connections, "duration_s": duration}
    for h in HARDENING:
        for k in ("req_per_s", "p50_ms", "p99_ms"):
            row[f"{h}_{k}"] = round(median(s[k] for s in samples[h]), 2)
    row["ratio_req_per_s_on_over_off"] = round(row["on_req_per_s"] / row["off_req_per_s"], 3)
    return row


def _hardening_redis(ctx: Context, requests: int) -> dict[str, Any]:
    images = {h: Bootable(ctx.build("redis", "ukl", **extra).images.directory)
              for h, extra in HARDENING.items()}
    ctx.note(f"redis-benchmark -p PORT -c {REDIS_CLIENTS} -n {requests} -P 1 -t set,get --csv")
    samples = alternate({h: (lambda b=b: _redis_sample(b, ctx, requests, 1))
                         for h, b in images.items()}, ctx.rounds)
    row: dict[str, Any] = {"requests": requests, "clients": REDIS_CLIENTS, "pipeline": 1}
    for h in HARDENING:
        for k in samples[h][0]:
            row[f"{h}_{k}"] = round(median(s[k] for s in samples[h]), 2)
    for test in ("SET", "GET"):
        row[f"{test}_ratio_rps_on_over_off"] = round(row[f"on_{test}_rps"]
                                                     / row[f"off_{test}_rps"], 3)
    return row
