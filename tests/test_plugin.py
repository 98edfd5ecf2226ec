"""The pytest plugin (entry point pytest11) as an app developer uses it: the example
apps' own tests, run by a separate pytest in a copy of each app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ukl_build.cache import Cache
from ukl_build.pytest_plugin import find_project

from conftest import copy_example

pytestmark = pytest.mark.kernel


# The session's cache reaches the inner pytest through UKL_BUILD_CACHE (set by the fixture).
def _pytest(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=1500)


def _qemu_running(marker: str) -> bool:
    ps = subprocess.run(["pgrep", "-f", f"qemu-system.*{marker}"], capture_output=True)
    return ps.returncode == 0


@pytest.mark.parametrize("app", ["hello", "httpd"])
def test_example_apps_own_tests_pass_through_the_plugin(app: str, tmp_path: Path,
                                                        cache: Cache) -> None:
    project = copy_example(app, tmp_path)
    proc = _pytest("-v", "tests", cwd=project)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " PASSED" in proc.stdout and " FAILED" not in proc.stdout
    assert not _qemu_running(str(tmp_path))


def test_a_failing_test_shows_the_console_and_leaves_no_vm(tmp_path: Path, cache: Cache) -> None:
    project = copy_example("hello", tmp_path)
    (project / "tests" / "test_hello.py").write_text(
        "def test_wrong_status(ukl_vm):\n"
        "    vm = ukl_vm(args=['failing'])\n"
        "    assert vm.wait(timeout=120) == 4\n"
        "\n"
        "def test_still_running_vm_is_stopped(ukl_vm):\n"
        "    ukl_vm(args=['abandoned'])\n"
        "    assert False, 'abandon the VM'\n")
    proc = _pytest("tests", cwd=project)
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert "ukl_vm hello #1 console" in proc.stdout
    assert "Hello, failing, from a unikernel!" in proc.stdout  # the console, in the report
    assert "2 failed" in proc.stdout
    assert not _qemu_running(str(tmp_path))


def test_find_project(tmp_path: Path) -> None:
    project = copy_example("hello", tmp_path)
    assert find_project(project / "tests") == project
    assert find_project(project / "src") == project
    assert find_project(tmp_path) is None
