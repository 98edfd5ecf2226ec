"""Redis 7.0.15, unmodified from Debian's source package, on musl (QEMU TCG).

Every check runs twice: in UKL mode (Redis and musl linked into vmlinux, in
ring 0) and in user mode (a static /init).

Talked to with Debian's own redis-cli and redis-benchmark through a forwarded port.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Builds, free_port

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", params=["ukl", "user"])
def redis_port(builds: Builds, request: pytest.FixtureRequest) -> Iterator[int]:
    result = builds("redis", request.param)
    assert result.images.manifest["mode"] == request.param
    assert result.images.manifest["app"]["source"]["package"] == "redis"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ukl_build", "run", str(result.images.directory),
         "--forward", f"{port}:6379", "--timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if "Ready to accept connections" in line:
                break
        else:
            raise AssertionError(f"redis did not start: {proc.stderr.read() if proc.stderr else ''}")
        deadline = time.monotonic() + 60
        while cli(port, "PING").stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "no PONG through the forward"
            time.sleep(0.5)
        yield port
    finally:
        proc.kill()
        proc.wait()


def cli(port: int, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["redis-cli", "-p", str(port), "--raw", *args], input=data,
                          capture_output=True, timeout=60, **({} if data else {"text": True}))


def test_commands(redis_port: int) -> None:
    p = redis_port
    assert "redis_version:7.0.15" in cli(p, "INFO", "server").stdout
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


def test_fifty_concurrent_clients(redis_port: int) -> None:
    proc = subprocess.run(["redis-benchmark", "-p", str(redis_port), "-c", "50", "-n", "2000",
                           "-t", "set,get", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "SET:" in proc.stdout and "GET:" in proc.stdout, proc.stdout
