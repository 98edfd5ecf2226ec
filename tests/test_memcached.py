"""memcached 1.6.18 on libevent 2.1.12, both unmodified from Debian's source packages,
built with musl and linked into vmlinux (UKL mode, QEMU TCG); every check runs again
with the same build as a static /init (user mode).

libevent is a dependency (``[tool.ukl-build.deps.libevent]``): configured,
built and installed into the cache before memcached's own configure finds it.
Talked to with pymemcache, a real client, through a forwarded port.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from pymemcache.client.base import Client

from ukl_build.cache import Cache
from ukl_build.pipeline import build

from conftest import Builds, copy_example, free_port

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", params=["ukl", "user"])
def memcached_port(builds: Builds, request: pytest.FixtureRequest) -> Iterator[int]:
    # User mode: the same sources as a static /init, on the benchmarks' user-mode
    # kernel configuration (server, net, virtio-net, microvm): no extra kernel.
    result = builds("memcached", request.param)
    manifest = result.images.manifest
    assert manifest["mode"] == request.param
    assert manifest["app"]["source"]["package"] == "memcached"
    assert [(d["name"], d["package"]) for d in manifest["app"]["deps"]] == [("libevent", "libevent")]
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ukl_build", "run", str(result.images.directory),
         "--forward", f"{port}:11211", "--timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            c = Client(("127.0.0.1", port), connect_timeout=5, timeout=10)
            try:
                if c.version():
                    break
            except OSError:
                pass
            finally:
                c.close()
            assert proc.poll() is None, f"memcached exited: {proc.communicate()}"
            assert time.monotonic() < deadline, "memcached did not answer through the forward"
            time.sleep(0.5)
        yield port
    finally:
        proc.kill()
        proc.communicate()


def client(port: int) -> Client:
    return Client(("127.0.0.1", port), connect_timeout=10, timeout=30)


def test_get_set_in_ring0(memcached_port: int) -> None:
    c = client(memcached_port)
    assert c.version().decode() == "1.6.18"
    assert c.set("greeting", b"hello from ring 0", noreply=False)
    assert c.get("greeting") == b"hello from ring 0"
    assert c.get("missing") is None
    c.set("n", b"41", noreply=False)
    assert c.incr("n", 1) == 42
    assert c.add("n", b"0", noreply=False) is False  # exists already
    assert c.delete("n", noreply=False)
    assert c.get("n") is None
    big = bytes(range(256)) * 2048  # 512 KiB: below the 1 MiB item limit
    assert c.set("big", big, noreply=False)
    assert c.get("big") == big
    many = {f"k{i}": str(i).encode() for i in range(500)}
    assert c.set_many(many, noreply=False) == []
    assert c.get_many(list(many)) == many
    stats = c.stats()
    assert stats[b"threads"] == 2  # -t 2 from [tool.ukl-build] args
    assert stats[b"cmd_set"] >= 503
    c.close()


def test_expiry(memcached_port: int) -> None:
    c = client(memcached_port)
    c.set("short", b"x", expire=1, noreply=False)
    assert c.get("short") == b"x"
    time.sleep(2.5)  # memcached's clock ticks once a second (a libevent timer)
    assert c.get("short") is None
    c.close()


def test_concurrent_clients(memcached_port: int) -> None:
    errors: list[str] = []
    clients = [client(memcached_port) for _ in range(10)]

    def work(i: int, c: Client) -> None:
        try:
            for j in range(50):
                c.set(f"c{i}", str(j).encode(), noreply=False)
                if c.get(f"c{i}") != str(j).encode():
                    errors.append(f"client {i}: get {j}")
        except Exception as e:  # reported below, in the test thread
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for c in clients:
        c.close()
    assert not errors


def test_libevent_is_built_once_per_toolchain(builds: Builds, cache: Cache,
                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    """A second project with the same dependency reuses the cached libevent."""
    builds("memcached", "ukl")
    entries = sorted(p.name for p in (cache.root / "deps").iterdir() if p.is_dir())
    project = copy_example("memcached", tmp_path_factory.mktemp("memcached-again"))
    log = project / "build" / "ukl-build" / "build.log"
    build(project, {"mode": "ukl"}, cache=cache)
    assert sorted(p.name for p in (cache.root / "deps").iterdir() if p.is_dir()) == entries
    assert "deps: building libevent" not in log.read_text()
