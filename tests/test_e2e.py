"""End to end under QEMU TCG: build the examples, boot them, talk to them."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ukl_build.errors import BuildError, UklError
from ukl_build.pipeline import BuildResult, build

from conftest import EXAMPLE_RECIPES, Builds, booted, check_httpd, copy_example, run_cli, valid_cyclonedx

pytestmark = pytest.mark.kernel


def test_hello_boots_and_returns_status(hello_build: BuildResult) -> None:
    image_dir = hello_build.images.directory
    manifest = json.loads((image_dir / "manifest.json").read_text())
    assert manifest["kernel"]["release"].startswith("6.1.")
    assert manifest["kernel"]["source"]["kind"] == "debian"
    assert manifest["images"]["bzimage"]["size"] < 3 * 1024 * 1024
    start = time.monotonic()
    proc = run_cli("run", str(image_dir), "--accel", "tcg", "--timeout", "120", timeout=180)
    elapsed = time.monotonic() - start
    assert "Hello, world, from a unikernel! (CPL 0)" in proc.stdout, proc.stderr
    assert proc.returncode == 3, proc.stderr
    assert "app exited with status 3" in proc.stderr
    assert elapsed < 60


def test_rebuild_does_no_kernel_work(hello_build: BuildResult, cache) -> None:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    again = build(hello_build.settings.project_dir, cache=cache)
    elapsed = time.monotonic() - start
    assert not again.kernel_built
    assert "make bzImage" not in again.log.read_text()
    assert again.images.manifest["images"] == hello_build.images.manifest["images"]
    assert elapsed < 10, f"no-op rebuild took {elapsed:.1f} s"


def test_pvh_vmlinux_boots_directly_from_the_same_kernel(hello_build: BuildResult,
                                                        builds: Builds) -> None:
    # microvm kernels carry the PVH entry: the pvh format only exports vmlinux, no new kernel.
    both = builds("hello", "ukl", formats="bzimage;pvh")
    assert both.images.manifest["kernel"]["config"] == hello_build.images.manifest["kernel"]["config"]
    assert both.kernel.build_dir == hello_build.kernel.build_dir
    vmlinux = both.images.directory / both.images.manifest["images"]["pvh"]["file"]
    assert vmlinux.read_bytes()[:4] == b"\x7fELF"
    proc = run_cli("run", str(both.images.directory), "--image", "pvh", "--timeout", "120",
                   timeout=180)
    assert "Hello, world, from a unikernel! (CPL 0)" in proc.stdout, proc.stderr
    assert proc.returncode == 3, proc.stderr


def test_run_project_via_cli_with_args(hello_build: BuildResult, tmp_path: Path) -> None:
    # `run PROJECT` builds (the kernel is the session's: only the manifest changes) and
    # boots; -C overrides reach the build.  A copy: the session's project must keep
    # its own image directory for the tests that boot it later.
    project = copy_example("hello", tmp_path)
    proc = run_cli("run", str(project), "--timeout", "120",
                   "-C", "mode=ukl", "-C", "args=ukl", timeout=400)
    assert "Hello, ukl, from a unikernel!" in proc.stdout, proc.stderr
    assert proc.returncode == 3


def test_timeout_stops_the_vm(httpd_build: BuildResult) -> None:
    proc = run_cli("run", str(httpd_build.images.directory), "--timeout", "8", timeout=60)
    assert proc.returncode == 124
    assert "timeout" in proc.stderr


def test_httpd_serves_through_forward(httpd_build: BuildResult) -> None:
    check_httpd(httpd_build.images.directory)


def test_compile_error_reports_compiler_message_and_leaves_no_artifact(
    hello_build: BuildResult, cache, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    project = copy_example("hello", tmp_path)
    shutil.copytree(hello_build.images.directory, project / "build/ukl-build/image")
    (project / "src/hello.c").write_text("int main(void) { return undefined_thing; }\n")
    with pytest.raises(BuildError) as e:
        build(project, cache=cache)
    assert "app compile failed" in str(e.value)
    assert "'undefined_thing' undeclared" in str(e.value)
    assert "build.log" in str(e.value)
    assert not (project / "build/ukl-build/image").exists()


def test_cli_build_failure_exit_status(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)
    with open(project / "pyproject.toml", "a") as f:
        f.write("bogus = 1\n")
    proc = run_cli("build", str(project))
    assert proc.returncode == 1
    assert "unknown key 'bogus'" in proc.stderr and "Traceback" not in proc.stderr


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def test_pip_wheel_installs_and_boots(hello_build: BuildResult, tmp_path: Path) -> None:
    project = hello_build.settings.project_dir
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
         "-w", str(wheels), str(project)],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name == "ukl_hello-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        sbom = valid_cyclonedx(zf.read("ukl_hello-0.1.0.dist-info/sboms/sbom.cdx.json").decode())
    assert {"ukl_hello/__main__.py", "ukl_hello/_launcher/__init__.py",
            "ukl_hello/_launcher/cli.py", "ukl_hello/_image/manifest.json",
            "ukl_hello/_image/ukl_hello.bzImage"} <= names
    assert sbom["bomFormat"] == "CycloneDX"
    linux = next(c for c in sbom["components"] if c["name"] == "linux")
    assert linux["version"].startswith("6.1.") and linux["pedigree"]["patches"]
    digests = {p["name"].removeprefix("ukl-build:patch-sha256:"): p["value"]
               for p in linux["properties"] if p["name"].startswith("ukl-build:patch-sha256:")}
    assert digests == {p["name"]: p["sha256"]
                       for p in hello_build.images.manifest["kernel"]["patches"]}

    check = subprocess.run([sys.executable, "-m", "check_wheel_contents", str(wheel)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    py = _venv(tmp_path / "venv")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", str(wheel)], check=True)
    run = subprocess.run([str(py), "-m", "ukl_hello", "--timeout", "120"],
                         capture_output=True, text=True, timeout=180)
    assert "Hello, world, from a unikernel!" in run.stdout, run.stderr
    assert run.returncode == 3
    # the console script does the same
    script = subprocess.run([str(tmp_path / "venv/bin/ukl-hello"), "--timeout", "120"],
                            capture_output=True, text=True, timeout=180)
    assert script.returncode == 3
    # and `ukl_build run` accepts the wheel itself
    direct = run_cli("run", str(wheel), "--timeout", "120", timeout=180)
    assert direct.returncode == 3


def test_python_build_sdist_and_wheel(hello_build: BuildResult, tmp_path: Path) -> None:
    project = hello_build.settings.project_dir
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation",
                           "--outdir", str(out), str(project)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ukl_hello-0.1.0-py3-none-any.whl", "ukl_hello-0.1.0.tar.gz"]
    manifest = run_cli("inspect", "--json", str(out / names[0]))
    assert json.loads(manifest.stdout)["name"] == "ukl-hello"


def test_httpd_times_out_half_sent_requests(httpd_build: BuildResult) -> None:
    with booted(httpd_build.images.directory, "--", "--port", "8080", "--idle-timeout", "2",
                forward=[8080]) as vm:
        vm.wait_for("listening on port 8080", timeout=90)
        with socket.create_connection(("127.0.0.1", vm.port(8080)), timeout=30) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: never complete
            start = time.monotonic()
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
            waited = time.monotonic() - start
        assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), reply
        assert 1.0 < waited < 10, waited


def test_httpd_idle_connections_cannot_lock_clients_out(httpd_build: BuildResult) -> None:
    with booted(httpd_build.images.directory, "--", "--port", "8080", "--max-conns", "8",
                forward=[8080]) as vm:
        vm.wait_for("listening on port 8080", timeout=90)
        port = vm.port(8080)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(12)]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b"Hello from ukl-build httpd!\n"
        conn.close()
        closed = 0
        for s in idle:  # the longest-idle ones made room
            s.settimeout(5)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                continue
            finally:
                s.close()
        assert closed >= 4, closed


def test_frontends_with_isolation_give_one_wheel(hello_build: BuildResult, ukl_build_links: Path,
                                                 tmp_path: Path) -> None:
    """pip wheel, python -m build (sdist, then the wheel from the unpacked sdist) and uv
    build, each in its own isolated build environment with ukl-build from a local
    --find-links directory, as it would come from an index: one wheel, byte for byte."""
    links = ukl_build_links
    project = str(hello_build.settings.project_dir)
    uv = Path(sys.executable).parent / "uv"
    frontends = {
        "pip": [sys.executable, "-m", "pip", "wheel", "--no-deps", "--find-links", str(links),
                "-w", "{out}", project],
        "build": [sys.executable, "-m", "build", "--outdir", "{out}", project],
        "uv": [str(uv), "build", "--python", sys.executable, "--find-links", str(links),
               "--out-dir", "{out}", project],
    }
    # python -m build's isolated pip finds ukl-build in links; uv gets a cache of its own:
    # its shared one keeps a ukl-build wheel by path and version from an earlier run.
    env = {**os.environ, "PIP_FIND_LINKS": str(links), "UV_CACHE_DIR": str(tmp_path / "uv-cache")}
    wheels = {}
    for name, argv in frontends.items():
        out = tmp_path / name
        proc = subprocess.run([a.replace("{out}", str(out)) for a in argv], capture_output=True,
                              text=True, timeout=900, env=env)
        assert proc.returncode == 0, name + proc.stdout[-2000:] + proc.stderr[-2000:]
        (wheels[name],) = out.glob("*.whl")
    assert (tmp_path / "build" / "ukl_hello-0.1.0.tar.gz").is_file()  # the wheel's source
    digests = {name: hashlib.sha256(w.read_bytes()).hexdigest() for name, w in wheels.items()}
    assert len(set(digests.values())) == 1, digests
    run = run_cli("run", str(wheels["uv"]), "--timeout", "120", timeout=180)
    assert "Hello, world, from a unikernel! (CPL 0)" in run.stdout, run.stderr


def test_make_app_from_a_verified_archive(hello_build: BuildResult, cache,  # type: ignore[no-untyped-def]
                                          tmp_path: Path) -> None:
    # The app's source is a tarball named by path + sha256, not files in the project.
    src = tmp_path / "upstream" / "tiny-1.0"
    src.mkdir(parents=True)
    (src / "Makefile").write_text("tiny: tiny.c\n\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)\n")
    (src / "tiny.c").write_text('#include <stdio.h>\n'
                                'int main(void) { printf("tiny from a tarball\\n"); return 4; }\n')
    project = tmp_path / "proj"
    project.mkdir()
    subprocess.run(["tar", "-czf", str(project / "tiny-1.0.tar.gz"), "-C", str(src.parent),
                    "tiny-1.0"], check=True)
    digest = hashlib.sha256((project / "tiny-1.0.tar.gz").read_bytes()).hexdigest()
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "tiny"\nversion = "1.0"\n[tool.ukl-build]\nmode = "ukl"\n{EXAMPLE_RECIPES}\n'
        '[tool.ukl-build.make]\noutput = "tiny"\n'
        f'source = {{ path = "tiny-1.0.tar.gz", sha256 = "{digest}" }}\n')
    result = build(project, cache=cache)
    app = result.images.manifest["app"]
    assert app["source"] == {"kind": "path", "path": str(project / "tiny-1.0.tar.gz"),
                             "sha256": digest}
    sbom = valid_cyclonedx((result.images.directory / "sbom.cdx.json").read_text())
    (comp,) = [c for c in sbom["components"] if c["bom-ref"] == "app-source"]
    assert comp["hashes"] == [{"alg": "SHA-256", "content": digest}]
    proc = run_cli("run", str(result.images.directory), "--timeout", "120", timeout=180)
    assert "tiny from a tarball" in proc.stdout and proc.returncode == 4, proc.stderr
    # a wrong digest: refused, nothing built, nothing shipped
    bad = (project / "pyproject.toml").read_text().replace(digest, "0" * 64)
    (project / "pyproject.toml").write_text(bad)
    with pytest.raises(UklError, match="sha256 mismatch"):
        build(project, cache=cache)
    assert not (project / "build/ukl-build/image").exists()


def test_hello_on_musl_boots_in_ring0(hello_build: BuildResult, builds: Builds) -> None:
    result = builds("hello", "ukl", libc="musl")
    assert result.kernel.build_dir == hello_build.kernel.build_dir  # hello's kernel, relinked
    libc = result.images.manifest["app"]["libc_source"]
    assert libc["name"] == "musl" and libc["kind"] == "debian" and len(libc["sha256"]) == 64
    sbom = valid_cyclonedx((result.images.directory / "sbom.cdx.json").read_text())
    assert any(c["bom-ref"] == "libc" and c["name"] == "musl" for c in sbom["components"])
    proc = run_cli("run", str(result.images.directory), "--timeout", "120", timeout=180)
    assert "Hello, world, from a unikernel! (CPL 0)" in proc.stdout, proc.stderr
    assert proc.returncode == 3


def test_setuptools_project_with_the_plugin_ships_image_and_launcher(
        hello_build: BuildResult, ukl_build_links: Path, tmp_path: Path) -> None:
    """An app that keeps setuptools as its backend, with Python code of its own, and adds
    [tool.ukl-build]: its wheel carries the image and the launcher as ours does."""
    project = tmp_path / "hello-py"
    shutil.copytree(hello_build.settings.project_dir / "src", project / "csrc")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=70.1", "ukl-build"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "hello-py"\nversion = "1.2"\n\n'
        '[tool.setuptools]\npackages = ["hello_py"]\n\n'
        f'[tool.ukl-build]\nsources = ["csrc/hello.c"]\nargs = ["setuptools"]\n{EXAMPLE_RECIPES}\n')
    pkg = project / "hello_py"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('def greeting() -> str:\n    return "from Python"\n')
    (pkg / "__main__.py").write_text(
        "import sys\nfrom pathlib import Path\n\nfrom hello_py import _ukl_runner\n\n"
        'sys.exit(_ukl_runner.launcher_main(Path(__file__).parent / "_image"))\n')
    # As users build it: an isolated environment, ukl-build from a --find-links directory.
    links = ukl_build_links
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--find-links",
                           str(links), "-w", str(out), str(project)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {"hello_py/__init__.py", "hello_py/__main__.py", "hello_py/_ukl_runner/__init__.py",
            "hello_py/_ukl_runner/run.py",
            "hello_py/_image/manifest.json", "hello_py/_image/hello_py.bzImage",
            "hello_py/_image/sbom.cdx.json"} <= names, names
    py = _venv(tmp_path / "venv")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", str(wheel)], check=True)
    own = subprocess.run([str(py), "-c", "import hello_py; print(hello_py.greeting())"],
                         capture_output=True, text=True, check=True)
    assert own.stdout.strip() == "from Python"
    run = subprocess.run([str(py), "-m", "hello_py", "--timeout", "120"],
                         capture_output=True, text=True, timeout=180)
    assert "Hello, setuptools, from a unikernel! (CPL 0)" in run.stdout, run.stderr
    assert run.returncode == 3


SHIPPED_FILES = """\
[tool.ukl-build.files."/etc/greeting"]
path = "greeting"
mode = "0600"
[tool.ukl-build.files."/srv/www"]
path = "site"
"""
CAT = r"""#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
	static const char *const paths[] = { "/etc/greeting", "/srv/www/index.html" };
	char buf[256];

	for (int i = 0; i < 2; i++) {
		int fd = open(paths[i], O_RDONLY, 0);
		long n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

		if (n < 0) {
			printf("cannot read %s\n", paths[i]);
			return 1;
		}
		buf[n] = 0;
		printf("%s: %s", paths[i], buf);
	}
	return 5;
}
"""


@pytest.mark.parametrize("mode", ["ukl", "user"])
def test_project_files_reach_the_image_in_both_modes(hello_build: BuildResult, cache,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path, mode: str) -> None:
    """[tool.ukl-build.files]: a file and a directory of the project are in the
    initramfs, byte for byte, read by the app in ring 0 and as /init; the manifest and
    the SBOM name each file with its digest; a changed file rebuilds the image."""
    project = tmp_path / "cat"
    (project / "src").mkdir(parents=True)
    (project / "src" / "cat.c").write_text(CAT)
    (project / "greeting").write_text("hello from a shipped file\n")
    (project / "site").mkdir()
    (project / "site" / "index.html").write_text("<p>static</p>\n")
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "cat"\nversion = "1.0"\n[tool.ukl-build]\nmode = "{mode}"\n'
        f'sources = ["src/cat.c"]\n{EXAMPLE_RECIPES}\n{SHIPPED_FILES}')
    result = build(project, cache=cache)
    proc = run_cli("run", str(result.images.directory), "--timeout", "120", timeout=180)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "/etc/greeting: hello from a shipped file" in proc.stdout
    assert "/srv/www/index.html: <p>static</p>" in proc.stdout
    digest = hashlib.sha256(b"hello from a shipped file\n").hexdigest()
    assert {"path": "/etc/greeting", "source": "greeting", "sha256": digest,
            "mode": "0600"} in result.images.manifest["files"]
    sbom = valid_cyclonedx((result.images.directory / "sbom.cdx.json").read_text())
    (comp,) = [c for c in sbom["components"] if c["bom-ref"] == "image-file:/etc/greeting"]
    assert comp["hashes"] == [{"alg": "SHA-256", "content": digest}]
    assert "image-file:/srv/www/index.html" in sbom["dependencies"][0]["dependsOn"]
    # The file is in the image's key: changed, the image is made again and holds it.
    (project / "greeting").write_text("changed\n")
    again = build(project, cache=cache)
    assert again.kernel.key != result.kernel.key
    proc = run_cli("run", str(again.images.directory), "--timeout", "120", timeout=180)
    assert "/etc/greeting: changed" in proc.stdout, proc.stdout + proc.stderr
