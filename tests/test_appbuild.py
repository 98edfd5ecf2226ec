"""The app stage on its own: plain sources, make and CMake, against the tree's nolibc."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ukl_build.appbuild import build_app
from ukl_build.cache import Cache
from ukl_build.context import BuildContext
from ukl_build.errors import BuildError
from ukl_build.progress import Reporter
from ukl_build.settings import load_settings

pytestmark = pytest.mark.kernel  # needs the real kernel tree (no kernel build)

C_APP = r"""
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/utsname.h>
int main(void)
{
    char buf[32];
    struct utsname u;
    snprintf(buf, sizeof(buf), "%s-%05d-%x", "ok", 42, 255);
    printf("%s %d\n", buf, (int)sizeof(struct epoll_event));
    return strcmp(buf, "ok-00042-ff") != 0 || uname(&u) != 0;
}
"""


def project(tmp_path: Path, table: str, source: str = C_APP, mode: str = "user") -> Path:
    (tmp_path / "src").mkdir(parents=True)
    (tmp_path / "src/app.c").write_text(source)
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "t"\nversion = "1"\n[tool.ukl-build]\nmode = "{mode}"\n{table}\n')
    return tmp_path


def build(tmp_path: Path, patched_tree, cache, table: str, source: str = C_APP,  # type: ignore[no-untyped-def]
          mode: str = "user") -> Path:
    settings = load_settings(project(tmp_path, table, source, mode))
    with Reporter(tmp_path / "log") as r:
        app = build_app(settings, patched_tree, tmp_path / "build",
                        BuildContext(cache, r, dict(os.environ)))
    return app.path


def runs_natively(binary: Path) -> subprocess.CompletedProcess[str]:
    # The static x86-64 /init also runs on the (x86-64 Linux) build host.
    return subprocess.run([str(binary)], capture_output=True, text=True, timeout=10)


def test_sources_nolibc(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    binary = build(tmp_path, patched_tree, cache, 'sources = ["src/app.c"]')
    proc = runs_natively(binary)
    assert proc.returncode == 0 and proc.stdout == "ok-00042-ff 12\n"
    assert "INTERP" not in subprocess.run(["readelf", "-l", str(binary)], capture_output=True,
                                          text=True).stdout


def test_the_c_library_is_hashed_only_before_a_compile(  # type: ignore[no-untyped-def]
        tmp_path: Path, patched_tree, cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sysroot (about a thousand headers) is checked file by file before the app is
    compiled against it, and not in a build that reuses the app: a no-op build stays
    cheap (docs/design.md, "Nothing reused is trusted")."""
    checks: list[tuple[str, str]] = []
    check_entry = Cache.check_entry

    def spy(self: Cache, kind: str, key: str, level: str = "stat") -> None:
        checks.append((kind, level))
        check_entry(self, kind, key, level)

    monkeypatch.setattr(Cache, "check_entry", spy)
    settings = load_settings(project(tmp_path / "p", 'sources = ["src/app.c"]'))
    with Reporter(tmp_path / "log1") as r:
        build_app(settings, patched_tree, tmp_path / "build",
                        BuildContext(cache, r, dict(os.environ)))
    assert ("sysroots", "content") in checks
    checks.clear()
    with Reporter(tmp_path / "log2") as r:  # the same project again: the app is reused
        app = build_app(settings, patched_tree, tmp_path / "build",
                        BuildContext(cache, r, dict(os.environ)))
    assert "unchanged: reusing" in (tmp_path / "log2").read_text()
    assert ("sysroots", "content") not in checks, checks
    assert runs_natively(app.path).stdout == "ok-00042-ff 12\n"


def test_sources_glibc(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    binary = build(tmp_path, patched_tree, cache, 'sources = ["src/app.c"]\nlibc = "glibc"')
    assert runs_natively(binary).stdout == "ok-00042-ff 12\n"


def test_make_project(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "Makefile").write_text("CFLAGS += -DEXTRA=1\napp: src/app.c\n"
                                       "\t$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LDLIBS)\n")
    binary = build(tmp_path, patched_tree, cache, 'make = { output = "app" }')
    assert runs_natively(binary).stdout == "ok-00042-ff 12\n"
    assert not (tmp_path / "app").exists()  # built in a copy, not in the project


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("ninja") is None,
                    reason="cmake/ninja from PyPI are test dependencies")
def test_cmake_project(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\nproject(t C)\nadd_executable(server src/app.c)\n")
    binary = build(tmp_path, patched_tree, cache, 'cmake = { target = "server" }')
    assert runs_natively(binary).stdout == "ok-00042-ff 12\n"


def test_compile_error_names_file_and_line(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BuildError, match=r"src/app.c:2:\d+: error: expected .;."):
        build(tmp_path, patched_tree, cache, 'sources = ["src/app.c"]',
              source="int main(void)\n{ return 0 }\n")


def _nm(path: Path, *flags: str) -> set[str]:
    out = subprocess.run(["nm", *flags, str(path)], capture_output=True, text=True, check=True)
    return {ln.split()[-1] for ln in out.stdout.splitlines() if ln.strip() and ":" not in ln}


def test_ukl_archive_is_prefixed_and_self_contained(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    archive = build(tmp_path, patched_tree, cache, 'sources = ["src/app.c"]', mode="ukl")
    assert archive.name == "ukl-app.a"
    defined = _nm(archive, "--defined-only")
    assert "ukl_app_main" in defined and "ukl_app__start" in defined  # nolibc start code, renamed too
    assert all(name.startswith("ukl_") for name in defined), defined
    # the bridge into the kernel, and (hardened) the kernel's canary-failure handler
    assert _nm(archive, "-u") == {"ukl_syscall", "__stack_chk_fail"}
    (tmp_path / "plain").mkdir()
    plain = build(tmp_path / "plain", patched_tree, cache,
                  'sources = ["src/app.c"]\nhardened = false', mode="ukl")
    assert _nm(plain, "-u") == {"ukl_syscall"}


def test_ukl_undefined_symbol_is_named(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    src = "int missing_function(void);\nint main(void) { return missing_function(); }\n"
    with pytest.raises(BuildError, match="undefined symbols after linking the app with its libc: "
                                         "missing_function"):
        build(tmp_path, patched_tree, cache, 'sources = ["src/app.c"]', source=src, mode="ukl")



def test_an_app_without_main_is_refused_before_the_kernel_link(  # type: ignore[no-untyped-def]
        tmp_path: Path, patched_tree, cache) -> None:
    """An empty .c file compiled fine and failed in the kernel's link, minutes later, with
    "undefined reference to ukl_app_main"."""
    with pytest.raises(BuildError, match=r"app: the app defines no main\(\)"):
        build(tmp_path, patched_tree, cache, 'sources = ["src/app.c"]', source="", mode="ukl")


def test_a_directory_in_sources_is_named(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BuildError, match=r"sources: src is a directory .*; list the files"):
        build(tmp_path, patched_tree, cache, 'sources = ["src"]')

SHORTCUT_APP = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
int main(void)
{
    char b[8];
    long n = syscall(__NR_getpid, 0, 0, 0, 0, 0, 0);   /* a number known only at run time */
    return getppid() + read(0, b, 1) + write(1, b, 1) + send(1, b, 1, 0) + recv(0, b, 1, 0) + n;
}
"""


def test_ukl_shortcuts_bind_the_kernels_direct_entry_points(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    archive = build(tmp_path, patched_tree, cache, 'sources = ["src/app.c"]\nshortcuts = true',
                    source=SHORTCUT_APP, mode="ukl")
    assert _nm(archive, "-u") == {"ukl_syscall", "ukl_sc_getppid", "ukl_sc_read", "ukl_sc_write",
                                  "ukl_sc_sendto", "ukl_sc_recvfrom", "__stack_chk_fail"}
    # Without the switch, the same source calls only the generic bridge.
    (tmp_path / "plain").mkdir()
    plain = build(tmp_path / "plain", patched_tree, cache, 'sources = ["src/app.c"]',
                  source=SHORTCUT_APP, mode="ukl")
    assert _nm(plain, "-u") == {"ukl_syscall", "__stack_chk_fail"}


def test_freestanding_headers_user_mode(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    source = (Path(__file__).parent / "apps/stdheaders/src/stdheaders.c").read_text()
    binary = build(tmp_path, patched_tree, cache, 'sources = ["src/app.c"]', source)
    proc = runs_natively(binary)
    assert proc.returncode == 0 and proc.stdout.startswith("stdheaders: ok"), proc.stdout


TWO_FILES_MAKEFILE = ("app: a.o b.o\n\t$(CC) $(LDFLAGS) -o $@ a.o b.o $(LDLIBS)\n"
                      "%.o: %.c\n\t$(CC) $(CFLAGS) -c -o $@ $<\n")


def test_incremental_make_builds(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    """No compiler for an unchanged project; one changed file recompiles that file only."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "Makefile").write_text(TWO_FILES_MAKEFILE)
    (proj / "a.c").write_text('#include <stdio.h>\nint b(void);\n'
                              'int main(void) { printf("a%d\\n", b()); return 0; }\n')
    (proj / "b.c").write_text("int b(void) { return 1; }\n")
    table = 'make = { output = "app" }'

    def build_once(cflags: str = "") -> tuple[Path, str]:
        (proj / "pyproject.toml").write_text(
            f'[project]\nname = "t"\nversion = "1"\n[tool.ukl-build]\nmode = "user"\n{cflags}{table}\n')
        settings = load_settings(proj)
        log = tmp_path / "log"
        with Reporter(log) as r:
            app = build_app(settings, patched_tree, proj / "build",
                            BuildContext(cache, r, dict(os.environ)))
        return app.path, log.read_text()

    binary, log = build_once()
    assert runs_natively(binary).stdout == "a1\n"
    assert "-c -o a.o a.c" in log and "-c -o b.o b.c" in log
    _, log = build_once()
    # The compiler is asked its version and include directory (logged), nothing compiled.
    assert "no compiler run" in log and "$ make" not in log
    assert [ln for ln in log.splitlines() if "gcc" in ln] == [
        "$ gcc --version", "$ gcc -print-file-name=include"]
    (proj / "b.c").write_text("int b(void) { return 2; }\n")
    binary, log = build_once()
    assert "-c -o b.o b.c" in log and "-c -o a.o a.c" not in log
    assert runs_natively(binary).stdout == "a2\n"
    # other flags: a directory of their own, so switching back costs nothing
    binary, log = build_once('cflags = ["-DUNUSED=1"]\n')
    assert "-c -o a.o a.c" in log and "-DUNUSED=1" in log
    binary, log = build_once()
    assert "no compiler run" in log
    # a build that did not finish (no record) starts its directory afresh
    record = binary.parent / "record.json"
    record.unlink()
    (record.parent / "src/a.o").write_bytes(b"truncated by a kill")
    binary, log = build_once()
    assert "-c -o a.o a.c" in log and "-c -o b.o b.c" in log
    assert runs_natively(binary).stdout == "a2\n"


MUSL_APP = r"""
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>

static __thread int tls_counter;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int done, total;

static void *worker(void *arg)
{
    for (int i = 0; i < 1000; i++)
        tls_counter++;                      /* per-thread storage */
    errno = 100 + (int)(long)arg;           /* errno is per thread too */
    pthread_mutex_lock(&lock);
    total += tls_counter + (errno == 100 + (int)(long)arg);
    done++;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void bye(void) { printf("atexit ran\n"); }

int main(void)
{
    pthread_t t[4];
    struct timespec a, b;
    struct utsname u;
    char *big = malloc(8 << 20), *small = malloc(100);   /* mmap and brk */

    atexit(bye);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    pthread_mutex_lock(&lock);
    while (done < 4)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    memset(big, 1, 8 << 20);
    printf("total %d tls %d big %d small %d clock %d uname %d\n", total, tls_counter,
           big[(8 << 20) - 1], small != NULL, b.tv_sec > a.tv_sec || b.tv_nsec >= a.tv_nsec,
           uname(&u) == 0);
    return 0;
}
"""


def test_musl_user_mode(tmp_path: Path, patched_tree, cache) -> None:  # type: ignore[no-untyped-def]
    """musl built from Debian's source package; threads, TLS, errno, malloc, clocks, atexit."""
    def libcs() -> set[Path]:
        root = cache.root / "libcs"
        return {p for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()

    table = 'libc = "musl"\nsources = ["src/app.c"]'
    before = libcs()
    binary = build(tmp_path / "first", patched_tree, cache, table, MUSL_APP)
    proc = runs_natively(binary)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "total 4004 tls 0 big 1 small 1 clock 1 uname 1\natexit ran\n"
    assert b"GLIBC" not in binary.read_bytes()  # musl alone, static
    built = libcs()
    assert len(built - before) <= 1  # at most this libc's entry (the session may have it)
    # Built once, reused by every later build with this compiler and these flags.
    build(tmp_path / "second", patched_tree, cache, table, MUSL_APP)
    assert libcs() == built
