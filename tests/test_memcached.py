"""memcached 1.6.18 on libevent 2.1.12, both unmodified from Debian's source packages,
built with musl and linked into vmlinux (UKL mode, QEMU TCG); every check runs again
with the same build as a static /init (user mode).

libevent is a dependency (``[tool.ukl-build.deps.libevent]``): configured,
built and installed into the cache before memcached's own configure finds it.
Talked to with pymemcache, a real client, through a forwarded port.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from ukl_build.appbuild import build_app, plan_app
from ukl_build.cache import Cache
from ukl_build.context import BuildContext
from ukl_build.kbuild import reproducible_env
from ukl_build.pipeline import source_date_epoch
from ukl_build.progress import Reporter
from ukl_build.settings import load_settings

from conftest import EXAMPLES, SERVER_VARIANTS, Builds, booted, server_variant

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module", params=SERVER_VARIANTS)
def memcached_port(builds: Builds, request: pytest.FixtureRequest) -> Iterator[int]:
    # User mode: the same sources as a static /init, on the app's own recipes (server,
    # net, virtio-net, microvm): memcached needs the server recipe's users and event fds.
    mode, settings = server_variant(request)
    result = builds("memcached", mode, **settings)
    manifest = result.images.manifest
    assert manifest["mode"] == mode and manifest["app"]["shortcuts"] is bool(settings)
    assert manifest["app"]["source"]["package"] == "memcached"
    assert [(d["name"], d["package"]) for d in manifest["app"]["deps"]] == [("libevent", "libevent")]
    with booted(result.images.directory, forward=[11211], timeout=600) as vm:
        port = vm.port(11211)
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
            assert vm.running, "memcached's VM ended"
            assert time.monotonic() < deadline, "memcached did not answer through the forward"
            time.sleep(0.5)
        yield port


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


LIBEVENT_APP = r"""
#include <event2/event.h>
#include <stdio.h>

int main(void)
{
    struct event_base *base = event_base_new();

    printf("libevent %s: %s\n", event_get_version(), base ? "ok" : "FAIL");
    return base == NULL;
}
"""


@pytest.mark.xdist_group("memcached-ukl")  # where the ring-0 memcached is built (conftest.py)
def test_libevent_is_built_once_per_toolchain(builds: Builds, cache: Cache, patched_tree,  # type: ignore[no-untyped-def]
                                              tmp_path: Path) -> None:
    """A second project with the same dependency (a small program on libevent) reuses the
    libevent that memcached's build put into the cache, and links against it."""
    builds("memcached", "ukl")
    # Completed entries (a ".tmp-*" directory is another worker's build in progress).
    entries = sorted(p.name for p in (cache.root / "deps").iterdir()
                     if p.is_dir() and not p.name.startswith("."))
    example = (EXAMPLES / "memcached" / "pyproject.toml").read_text()
    deps = example[example.index("[tool.ukl-build.deps.libevent]"):example.index("[tool.ukl-build.make]")]
    project = tmp_path / "evapp"
    project.mkdir()
    (project / "app.c").write_text(LIBEVENT_APP)
    (project / "Makefile").write_text(
        "app: app.c\n\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ app.c -levent $(LDLIBS)\n")
    (project / "pyproject.toml").write_text(
        '[project]\nname = "evapp"\nversion = "1"\n[tool.ukl-build]\nmode = "ukl"\nlibc = "musl"\n'
        f'{deps}\n[tool.ukl-build.make]\noutput = "app"\n')
    log = tmp_path / "build.log"
    with Reporter(log) as r:
        ctx = BuildContext(cache, r, reproducible_env(cache, source_date_epoch()))
        app = build_app(load_settings(project), patched_tree, project / "build", ctx)
        plan = plan_app(load_settings(project), patched_tree, project / "build", ctx)
    # The libevent it links is the entry memcached's build made, and none was built: the
    # check names this build's own entry, not the listing, which a build of the other
    # worker (user mode's libevent) may change meanwhile.
    assert [d.name for d in plan.deps] == ["libevent"] and plan.deps[0].key in entries
    assert "deps: building libevent" not in log.read_text()
    assert [(d["name"], d["package"]) for d in app.deps] == [("libevent", "libevent")]
    assert "ukl_app_event_base_new" in _defined(app.path)  # libevent's code, in the archive


def _defined(path: Path) -> set[str]:
    out = subprocess.run(["nm", "--defined-only", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {ln.split()[-1] for ln in out.splitlines() if ln.strip() and ":" not in ln}
