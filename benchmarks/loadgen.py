"""python -m benchmarks.loadgen memcached-get|memcached-set|http --port P -n N [--size B]

A closed-loop client for the per-request cost tables: one connection, one
request at a time (pipeline 1), N requests, exit 0 once every answer was
right.  Its own speed does not matter there (the counts are the guest's);
that it checks every answer does.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys


def _recv_until(sock: socket.socket, buf: bytearray, end: bytes) -> bytes:
    """Bytes up to and including ``end``; the rest stays in ``buf``."""
    while end not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection (waiting for {end!r})")
        buf += chunk
    cut = buf.index(end) + len(end)
    out = bytes(buf[:cut])
    del buf[:cut]
    return out


def memcached(port: int, requests: int, size: int, op: str) -> None:
    value = b"x" * size
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        buf = bytearray()
        set_cmd = b"set key:0 0 0 %d\r\n%s\r\n" % (size, value)
        if op == "get":  # the key must exist
            sock.sendall(set_cmd)
            if _recv_until(sock, buf, b"\r\n") != b"STORED\r\n":
                raise RuntimeError("memcached did not store the key")
        expected = b"VALUE key:0 0 %d\r\n%s\r\nEND\r\n" % (size, value)
        for _ in range(requests):
            if op == "get":
                sock.sendall(b"get key:0\r\n")
                answer = _recv_until(sock, buf, b"END\r\n")
                if answer != expected:
                    raise RuntimeError(f"memcached answered {answer[:80]!r}")
            else:
                sock.sendall(set_cmd)
                answer = _recv_until(sock, buf, b"\r\n")
                if answer != b"STORED\r\n":
                    raise RuntimeError(f"memcached answered {answer!r}")


def http_get(port: int, requests: int, size: int, path: str | None = None) -> None:
    """GET /bytes/SIZE (httpd) ``requests`` times on one connection; with ``path``, that
    path (any server), whatever its size."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(requests):
            conn.request("GET", path or f"/bytes/{size}")
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or (path is None and len(body) != size):
                raise RuntimeError(f"the server answered {r.status} with {len(body)} bytes")
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["memcached-get", "memcached-set", "http"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", "--requests", type=int, default=1)
    p.add_argument("--size", type=int, default=64, help="value or body bytes (default 64)")
    p.add_argument("--path", default=None, help="http: GET this path instead of /bytes/SIZE")
    ns = p.parse_args(argv)
    try:
        if ns.kind == "http":
            http_get(ns.port, ns.requests, ns.size, ns.path)
        else:
            memcached(ns.port, ns.requests, ns.size, ns.kind.split("-")[1])
    except (OSError, RuntimeError, http.client.HTTPException) as e:
        print(f"loadgen {ns.kind}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
