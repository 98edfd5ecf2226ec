"""Redis 7.0.15, unmodified from Debian's source package, on musl (QEMU TCG).

Every check runs twice: in UKL mode (Redis and musl linked into vmlinux, in
ring 0) and in user mode (a static /init).

Talked to with Debian's own redis-cli and redis-benchmark through a forwarded port.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ukl_build.cache import Cache
from ukl_build.pipeline import build

from conftest import (
    SERVER_VARIANTS,
    Builds,
    booted,
    redis_cli,
    redis_ready,
    run_cli,
    run_image,
    server_variant,
)

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", params=SERVER_VARIANTS)
def redis_port(builds: Builds, request: pytest.FixtureRequest) -> Iterator[int]:
    mode, settings = server_variant(request)
    result = builds("redis", mode, **settings)
    assert result.images.manifest["mode"] == mode
    assert result.images.manifest["app"]["shortcuts"] is bool(settings)
    assert result.images.manifest["app"]["source"]["package"] == "redis"
    with booted(result.images.directory, forward=[6379], timeout=600) as vm:
        yield redis_ready(vm)


def test_commands(redis_port: int) -> None:
    p = redis_port
    server = redis_cli(p, "INFO", "server").stdout
    assert "redis_version:7.0.15" in server
    # built outside any git checkout's view (GIT_CEILING_DIRECTORIES), not stamped with ours
    assert "redis_git_sha1:00000000" in server
    assert redis_cli(p, "INCR", "n").stdout.strip() == "1"
    assert redis_cli(p, "INCR", "n").stdout.strip() == "2"
    redis_cli(p, "RPUSH", "l", "a", "b", "c")
    assert redis_cli(p, "LRANGE", "l", "0", "-1").stdout.split() == ["a", "b", "c"]
    redis_cli(p, "HSET", "h", "f1", "v1", "f2", "v2")
    assert sorted(redis_cli(p, "HGETALL", "h").stdout.split()) == ["f1", "f2", "v1", "v2"]
    redis_cli(p, "SET", "tmp", "x")
    assert redis_cli(p, "EXPIRE", "tmp", "100").stdout.strip() == "1"
    assert 0 < int(redis_cli(p, "TTL", "tmp").stdout) <= 100
    assert redis_cli(p, "EVAL", "return redis.call('INCRBY', KEYS[1], ARGV[1])", "1", "n", "40"
               ).stdout.strip() == "42"


def test_multi_exec(redis_port: int) -> None:
    script = b"MULTI\nSET a 1\nINCR a\nEXEC\n"
    out = subprocess.run(["redis-cli", "-p", str(redis_port)], input=script, capture_output=True,
                         timeout=60).stdout.decode()
    assert "QUEUED" in out and out.rstrip().endswith("2")


def test_one_mib_values(redis_port: int) -> None:
    value = bytes(range(256)) * 4096
    assert redis_cli(redis_port, "-x", "SET", "big", data=value).returncode == 0
    got = subprocess.run(["redis-cli", "-p", str(redis_port), "--raw", "GET", "big"],
                         capture_output=True, timeout=60).stdout
    assert got[:-1] == value  # --raw adds a newline


def test_ten_thousand_pipelined_commands(redis_port: int, tmp_path: Path) -> None:
    lines = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\nk%d\r\n$1\r\nv\r\n" % (len(b"k%d" % i), i)
                     for i in range(10_000))
    proc = subprocess.run(["redis-cli", "-p", str(redis_port), "--pipe"], input=lines,
                          capture_output=True, timeout=120)
    assert b"errors: 0, replies: 10000" in proc.stdout, proc.stdout + proc.stderr
    assert redis_cli(redis_port, "GET", "k9999").stdout.strip() == "v"


def _command(sock: socket.socket, *args: str) -> bytes:
    sock.sendall(b"".join([b"*%d\r\n" % len(args),
                           *(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)]))
    return sock.recv(4096)


def test_fifty_concurrent_clients(redis_port: int) -> None:
    # QEMU's user-mode network under TCG sets up new host connections slowly
    # (~0.2 s each) and resets some when dozens arrive at once (both modes), so
    # the 50 connections are opened first, then all of them work at once.
    socks = [socket.create_connection(("127.0.0.1", redis_port), timeout=60) for _ in range(50)]
    try:
        errors: list[str] = []

        def client(i: int, sock: socket.socket) -> None:
            for j in range(20):
                if _command(sock, "SET", f"c{i}", str(j)) != b"+OK\r\n":
                    errors.append(f"client {i}: SET {j}")
            if _command(sock, "GET", f"c{i}") != b"$2\r\n19\r\n":
                errors.append(f"client {i}: GET")

        threads = [threading.Thread(target=client, args=(i, s)) for i, s in enumerate(socks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        clients = redis_cli(redis_port, "INFO", "clients").stdout
        assert "connected_clients:51" in clients, clients  # the 50 and this redis-cli
    finally:
        for sock in socks:
            sock.close()
    proc = subprocess.run(["redis-benchmark", "-p", str(redis_port), "-c", "10", "-n", "2000",
                           "-t", "set,get", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "SET:" in proc.stdout and "GET:" in proc.stdout, proc.stdout


def test_what_ring0_refuses_fails_cleanly(redis_port: int, request: pytest.FixtureRequest) -> None:
    mode = request.node.callspec.params["redis_port"]
    reply = redis_cli(redis_port, "BGSAVE").stdout.strip()
    if mode.startswith("ukl"):  # fork is ENOSYS in ring 0: Redis reports it and keeps serving
        assert reply.startswith("ERR"), reply
        info = redis_cli(redis_port, "INFO", "persistence").stdout
        assert "rdb_last_bgsave_status:err" in info, info
    else:
        assert "Background saving started" in reply, reply
    assert redis_cli(redis_port, "PING").stdout.strip() == "PONG"
    assert redis_cli(redis_port, "GET", "k9999").returncode == 0


@pytest.mark.xdist_group("redis-ukl")  # where the ring-0 Redis is built (conftest.py)
def test_incremental_redis_builds(builds: Builds, cache: Cache, tmp_path: Path) -> None:
    """Unchanged: no compiler runs.  One changed .c file: only it is compiled again."""
    fetched = builds("redis", "ukl")
    again = build(fetched.settings.project_dir, {"mode": "ukl"}, cache=cache)
    log = again.log.read_text()
    assert "no compiler run" in log and "$ make" not in log, log
    assert again.app.sha256 == fetched.app.sha256
    # The same Redis as a local tree ({ path }), which a developer edits.
    project = tmp_path / "redis"
    shutil.copytree(fetched.settings.project_dir, project,
                    ignore=shutil.ignore_patterns("build"))
    src = next(p for p in (cache.root / "sources").glob("*/tree/redis-*") if p.is_dir())
    shutil.copytree(src, project / "redis-src", symlinks=True)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('source = { debian = "redis" }',
                                                       'source = { path = "redis-src" }'))
    first = build(project, {"mode": "ukl"}, cache=cache)
    c_file = project / "redis-src" / "src" / "t_string.c"
    c_file.write_text(c_file.read_text() + "\nint edited_by_the_test(void) { return 1; }\n")
    second = build(project, {"mode": "ukl"}, cache=cache)
    log = re.sub(r"\x1b\[[0-9;]*m", "", second.log.read_text())  # Redis colours its output
    compiled = set(re.findall(r"^\s*CC (\S+\.o)\s*$", log, re.M))  # its quiet make lines
    assert compiled == {"t_string.o"}, compiled
    assert second.app.sha256 != first.app.sha256


# Persistence on a volume (example_apps/redis: the append-only file on /data).  Each
# boots its own VMs on one volume file and ends them with SIGKILL to QEMU.

def _with_fsync(image: Path, policy: str) -> list[str]:
    """The image's Redis arguments with ``--appendfsync policy``."""
    args = list(json.loads((image / "manifest.json").read_text())["args"])
    args[args.index("--appendfsync") + 1] = policy
    return args


def _set(key: str, value: str) -> bytes:
    return f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n${len(value)}\r\n{value}\r\n".encode()


def _replies(sock: socket.socket, count: int, buf: bytearray) -> list[bytes]:
    """``count`` one-line replies (+OK, :N, -ERR), read from ``sock`` into ``buf``."""
    out: list[bytes] = []
    while len(out) < count:
        end = buf.find(b"\r\n")
        if end < 0:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} of {count} replies"
            buf += chunk
            continue
        out.append(bytes(buf[:end]))
        del buf[:end + 2]
    return out


def _missing(port: int, keys: list[str]) -> set[str]:
    """Which of ``keys`` the server does not have (MGET, 1,000 at a time)."""
    gone: set[str] = set()
    for i in range(0, len(keys), 1000):
        part = keys[i:i + 1000]
        values = redis_cli(port, "MGET", *part).stdout.split("\n")[:len(part)]
        gone |= {k for k, v in zip(part, values, strict=True) if v != "v" + k[1:]}
    return gone


@pytest.mark.parametrize("mode", ["ukl", "user"])
def test_acknowledged_writes_survive_a_killed_vm(builds: Builds, mode: str,
                                                 tmp_path: Path) -> None:
    """appendfsync always: 10,000 acknowledged SETs, QEMU killed, all there on the next
    boot.  everysec: SETs streamed for 3 s, QEMU killed; what was lost was acknowledged
    within the last 2 s before the kill (Redis's documented bound for everysec: a second,
    two when an fsync is slow)."""
    image = builds("redis", mode).images.directory
    assert "volume   data on /data: ext4, 64 MiB when created, read-write" in \
        run_cli("inspect", str(image)).stdout
    volume = ("--volume", f"data={tmp_path / 'data.img'}")
    with booted(image, *volume, "--", *_with_fsync(image, "always"), forward=[6379],
                timeout=600) as vm:
        with socket.create_connection(("127.0.0.1", redis_ready(vm)), timeout=60) as sock:
            buf = bytearray()
            for start in range(0, 10_000, 1000):
                sock.sendall(b"".join(_set(f"k{i}", f"v{i}") for i in range(start, start + 1000)))
                assert set(_replies(sock, 1000, buf)) == {b"+OK"}
        vm.kill()
    acked: list[tuple[str, float]] = []
    with booted(image, *volume, "--", *_with_fsync(image, "everysec"), forward=[6379],
                timeout=600) as vm:
        port = redis_ready(vm)
        assert redis_cli(port, "DBSIZE").stdout.strip() == "10000"
        assert not _missing(port, [f"k{i}" for i in range(10_000)])
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            buf, n, end = bytearray(), 10_000, time.monotonic() + 3
            while time.monotonic() < end:
                sock.sendall(b"".join(_set(f"k{i}", f"v{i}") for i in range(n, n + 20)))
                assert set(_replies(sock, 20, buf)) == {b"+OK"}
                now = time.monotonic()
                acked += [(f"k{i}", now) for i in range(n, n + 20)]
                n += 20
        killed = time.monotonic()
        vm.kill()
    with booted(image, *volume, forward=[6379], timeout=600) as vm:
        gone = _missing(redis_ready(vm), [k for k, _ in acked])
    lost = [t for k, t in acked if k in gone]
    window = killed - min(lost) if lost else 0.0
    print(f"everysec, {mode}: {len(acked)} SETs acknowledged in 3 s, {len(lost)} lost, "
          f"acknowledged {window:.2f} s before the kill at the earliest")
    assert window <= 2.0, f"{len(lost)} lost SETs, acknowledged up to {window:.2f} s before"


@pytest.mark.parametrize(("mode", "damage"), [("ukl", "superblock"), ("user", "swap")])
def test_a_volume_that_cannot_be_mounted_ends_the_boot(builds: Builds, mode: str, damage: str,
                                                       tmp_path: Path) -> None:
    """A corrupt ext4 (its superblock zeroed) or another file system (a swap area): the
    kernel says why on the console and the run ends non-zero, without starting Redis."""
    image = builds("redis", mode).images.directory
    disk = tmp_path / "data.img"
    if damage == "superblock":
        run_image(image, "--volume", f"data={disk}", "--", "--version")  # formats it
        with open(disk, "r+b") as f:
            f.seek(1024)
            f.write(bytes(1024))
    else:
        disk.write_bytes(bytes(16 << 20))
        subprocess.run(["mkswap", str(disk)], check=True, capture_output=True)
    status, out, err = run_image(image, "--volume", f"data={disk}", timeout=120)
    assert status != 0, out
    assert "volume /data: cannot mount /dev/vda as ext4: error -22" in out + err
    assert "Ready to accept connections" not in out
