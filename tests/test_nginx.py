"""nginx 1.22.1 with PCRE2 10.42 and zlib 1.2.13, all unmodified from Debian's source
packages, built with musl and linked into vmlinux (UKL mode, QEMU TCG); every check runs
again with the same build as a static /init (user mode).

One process (``master_process off; daemon off;`` in its nginx.conf), serving a static
site; the configuration and the site reach the image through
``[tool.ukl-build.files]``.  Talked to with http.client and wrk through a forwarded port.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ukl_build.files import file_sha256

from conftest import EXAMPLES, Builds, booted

pytestmark = pytest.mark.kernel

SITE = EXAMPLES / "nginx" / "site"


@dataclass(frozen=True)
class Served:
    mode: str
    port: int
    image: Path


@pytest.fixture(scope="module", params=["ukl", "user"])
def nginx(builds: Builds, request: pytest.FixtureRequest) -> Iterator[Served]:
    mode = str(request.param)
    result = builds("nginx", mode)
    manifest = result.images.manifest
    assert manifest["mode"] == mode
    assert [(d["name"], d["package"]) for d in manifest["app"]["deps"]] == [
        ("zlib", "zlib=1:1.2.13.dfsg-1"), ("pcre2", "pcre2=10.42-1")]
    with booted(result.images.directory, forward=[8080], timeout=600) as vm:
        vm.wait_for(r"nginx/1\.22\.1", timeout=240)
        port = vm.port(8080)
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(port, "/")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no answer through the forward"
            time.sleep(0.5)
        yield Served(mode, port, result.images.directory)


def get(port: int, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_the_static_site_and_a_404(nginx: Served) -> None:
    status, headers, body = get(nginx.port, "/")
    assert (status, headers["content-type"]) == (200, "text/html")
    assert body == (SITE / "index.html").read_bytes()
    assert headers["server"] == "nginx/1.22.1"
    status, _, body = get(nginx.port, "/no/such/page")
    assert status == 404 and b"404 Not Found" in body
    # zlib: gzip for a client that asks (nginx.conf's gzip_types)
    status, headers, body = get(nginx.port, "/css/site.css", **{"Accept-Encoding": "gzip"})
    assert (status, headers.get("content-encoding")) == (200, "gzip")
    assert gzip.decompress(body) == (SITE / "css" / "site.css").read_bytes()
    # PCRE2: the regular-expression location and its named capture
    status, headers, body = get(nginx.port, "/notes/first.txt")
    assert (status, headers.get("x-note")) == (200, "first")
    assert body == (SITE / "notes" / "first.txt").read_bytes()


def test_the_configuration_reaches_the_image_exactly(nginx: Served) -> None:
    conf = EXAMPLES / "nginx" / "conf" / "nginx.conf"
    digest = file_sha256(conf)
    manifest = json.loads((nginx.image / "manifest.json").read_text())
    shipped = {f["path"]: f for f in manifest["files"]}
    assert shipped["/etc/nginx/nginx.conf"]["sha256"] == digest
    assert shipped["/srv/www/index.html"]["sha256"] == file_sha256(SITE / "index.html")
    sbom = json.loads((nginx.image / "sbom.cdx.json").read_text())
    (comp,) = [c for c in sbom["components"]
               if c["bom-ref"] == "image-file:/etc/nginx/nginx.conf"]
    assert comp["hashes"] == [{"alg": "SHA-256", "content": digest}]


def test_wrk_for_ten_seconds(nginx: Served) -> None:
    """wrk, 4 connections for 10 s: every answer a 200, none refused or timed out."""
    proc = subprocess.run(["wrk", "-t", "2", "-c", "4", "-d", "10s", "--timeout", "10s",
                           f"http://127.0.0.1:{nginx.port}/"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    done = re.search(r"(\d+) requests in ([\d.]+)s", out)
    assert done is not None, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    assert int(done.group(1)) >= 1000, out  # TCG, a loaded host: ~2,000 a second idle
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    print(f"nginx {nginx.mode}: {done.group(1)} requests in {done.group(2)} s "
          f"({rate.group(1) if rate else '?'} req/s)")
