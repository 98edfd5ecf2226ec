"""Redis 7.0.15, unmodified from Debian's source package, on musl (QEMU TCG).

Every check runs twice: in UKL mode (Redis and musl linked into vmlinux, in
ring 0) and in user mode (a static /init).

Talked to with Debian's own redis-cli and redis-benchmark through a forwarded port.
"""

from __future__ import annotations

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

from conftest import SERVER_VARIANTS, Builds, booted, server_variant

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", params=SERVER_VARIANTS)
def redis_port(builds: Builds, request: pytest.FixtureRequest) -> Iterator[int]:
    mode, settings = server_variant(request)
    result = builds("redis", mode, **settings)
    assert result.images.manifest["mode"] == mode
    assert result.images.manifest["app"]["shortcuts"] is bool(settings)
    assert result.images.manifest["app"]["source"]["package"] == "redis"
    with booted(result.images.directory, forward=[6379], timeout=600) as vm:
        vm.wait_for("Ready to accept connections", timeout=120)
        port = vm.port(6379)
        deadline = time.monotonic() + 60
        while cli(port, "PING").stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "no PONG through the forward"
            time.sleep(0.5)
        yield port


def cli(port: int, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["redis-cli", "-p", str(port), "--raw", *args], input=data,
                          capture_output=True, timeout=60, **({} if data else {"text": True}))


def test_commands(redis_port: int) -> None:
    p = redis_port
    server = cli(p, "INFO", "server").stdout
    assert "redis_version:7.0.15" in server
    # built outside any git checkout's view (GIT_CEILING_DIRECTORIES), not stamped with ours
    assert "redis_git_sha1:00000000" in server
    assert cli(p, "INCR", "n").stdout.strip() == "1"
    assert cli(p, "INCR", "n").stdout.strip() == "2"
    cli(p, "RPUSH", "l", "a", "b", "c")
    assert cli(p, "LRANGE", "l", "0", "-1").stdout.split() == ["a", "b", "c"]
    cli(p, "HSET", "h", "f1", "v1", "f2", "v2")
    assert sorted(cli(p, "HGETALL", "h").stdout.split()) == ["f1", "f2", "v1", "v2"]
    cli(p, "SET", "tmp", "x")
    assert cli(p, "EXPIRE", "tmp", "100").stdout.strip() == "1"
    assert 0 < int(cli(p, "TTL", "tmp").stdout) <= 100
    assert cli(p, "EVAL", "return redis.call('INCRBY', KEYS[1], ARGV[1])", "1", "n", "40"
               ).stdout.strip() == "42"


def test_multi_exec(redis_port: int) -> None:
    script = b"MULTI\nSET a 1\nINCR a\nEXEC\n"
    out = subprocess.run(["redis-cli", "-p", str(redis_port)], input=script, capture_output=True,
                         timeout=60).stdout.decode()
    assert "QUEUED" in out and out.rstrip().endswith("2")


def test_one_mib_values(redis_port: int) -> None:
    value = bytes(range(256)) * 4096
    assert cli(redis_port, "-x", "SET", "big", data=value).returncode == 0
    got = subprocess.run(["redis-cli", "-p", str(redis_port), "--raw", "GET", "big"],
                         capture_output=True, timeout=60).stdout
    assert got[:-1] == value  # --raw adds a newline


def test_ten_thousand_pipelined_commands(redis_port: int, tmp_path: Path) -> None:
    lines = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\nk%d\r\n$1\r\nv\r\n" % (len(b"k%d" % i), i)
                     for i in range(10_000))
    proc = subprocess.run(["redis-cli", "-p", str(redis_port), "--pipe"], input=lines,
                          capture_output=True, timeout=120)
    assert b"errors: 0, replies: 10000" in proc.stdout, proc.stdout + proc.stderr
    assert cli(redis_port, "GET", "k9999").stdout.strip() == "v"


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
        clients = cli(redis_port, "INFO", "clients").stdout
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
    reply = cli(redis_port, "BGSAVE").stdout.strip()
    if mode.startswith("ukl"):  # fork is ENOSYS in ring 0: Redis reports it and keeps serving
        assert reply.startswith("ERR"), reply
        info = cli(redis_port, "INFO", "persistence").stdout
        assert "rdb_last_bgsave_status:err" in info, info
    else:
        assert "Background saving started" in reply, reply
    assert cli(redis_port, "PING").stdout.strip() == "PONG"
    assert cli(redis_port, "GET", "k9999").returncode == 0


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
