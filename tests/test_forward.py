"""Forwards opened when the guest listens (kernel patch 0020), without booting: the
command line, which boots wait, and the forwarder against stand-ins for QEMU's
chardev and QMP.  The boot tests (check_httpd, Redis, memcached) run it for real."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_runner import image_dir

from ukl_build.launcher.forward import ListenForwarder, check_host_ports
from ukl_build.launcher.options import RunError, RunOptions
from ukl_build.launcher.qemu import BootFiles, qemu_argv
from ukl_build.launcher.run import _command, _split_lines


def _manifest(d: Path) -> Any:
    return json.loads((d / "manifest.json").read_text())


def test_the_command_line_waits_for_the_listen(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ukl_build.launcher.qemu.host_tsc_khz", lambda: 2445400)
    d = image_dir(tmp_path, network=True, listen_notify=True)
    boot = BootFiles(qmp=tmp_path / "qmp.sock", listen=tmp_path / "listen.sock")
    argv = qemu_argv(_manifest(d), d, RunOptions(forward=["18080:8080", "18443:443"]), "tcg",
                     boot=boot)
    assert not any("hostfwd" in a for a in argv) and "-S" not in argv  # -S: the clock's
    assert argv[argv.index("-netdev") + 1] == "user,id=n0"
    assert argv[argv.index("-chardev") + 1] == f"socket,id=ukl-listen,path={boot.listen},server=off"
    assert "isa-debugcon,iobase=0xe9,chardev=ukl-listen" in argv
    assert argv[argv.index("-name") + 1] == "127.0.0.1:18080->8080 127.0.0.1:18443->443"
    ours, app = argv[argv.index("-append") + 1].split(" -- ")
    assert ours.endswith("quiet ip=10.0.2.15 listen_notify=0xe9") and app == "--port 8080"


@pytest.mark.parametrize(("extra", "opts", "waits"), [
    ({"listen_notify": True}, RunOptions(forward=["18080:8080"]), True),
    ({"listen_notify": True}, RunOptions(forward=["18080:8080"], forward_at_start=True), False),
    ({"listen_notify": True}, RunOptions(), False),  # nothing to forward
    ({}, RunOptions(forward=["18080:8080"]), False),  # a kernel without patch 0020
    ({"listen_notify": True, "cmdline_builtin": "console=ttyS0"},  # no room for the parameter
     RunOptions(forward=["18080:8080"], machine="q35"), False),
])
def test_which_boots_wait_for_the_listen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         extra: dict[str, Any], opts: RunOptions,
                                         waits: bool) -> None:
    monkeypatch.setattr("ukl_build.launcher.qemu.host_tsc_khz", lambda: 2445400)
    monkeypatch.setattr("ukl_build.launcher.qemu.shutil.which", lambda _: "/usr/bin/qemu")
    d = image_dir(tmp_path, network=True, **extra)
    argv, boot = _command(_manifest(d), d, opts, "tcg", tmp_path)
    assert (boot.listen is not None) is waits
    assert any("hostfwd" in a for a in argv) is (bool(opts.forward) and not waits)
    if waits:
        assert boot.qmp is not None


def test_a_taken_host_port_is_refused_before_the_boot() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RunError, match=rf"--forward {port}:80: 127.0.0.1:{port} is in use"):
            check_host_ports([(port, 80)])
    check_host_ports([(port, 80)])  # free again


def test_console_lines_split_across_reads() -> None:
    assert _split_lines(b"", b"ab\ncd") == ([b"ab"], b"cd")
    assert _split_lines(b"cd", b"e\n\nf\n") == ([b"cde", b"", b"f"], b"")
    assert _split_lines(b"tail", b"") == ([b"tail"], b"")  # the end: the last line too
    assert _split_lines(b"", b"") == ([], b"")


class _FakeQmp:
    """QEMU's QMP socket, as far as the forwarder uses it: each command recorded,
    ``hostfwd_add`` answered with ``said``."""

    def __init__(self, path: Path, said: str = ""):
        self.commands: list[dict[str, Any]] = []
        self.said = said
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as requests:
                conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
                for line in requests:
                    req = json.loads(line)
                    self.commands.append(req)
                    conn.sendall(b'{"event": "NIC_RX_FILTER_CHANGED"}\r\n')  # skipped
                    ret = self.said if req["execute"] == "human-monitor-command" else {}
                    conn.sendall(json.dumps({"return": ret}).encode() + b"\r\n")


@pytest.fixture
def qemu_stand_in() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_the_forwarder_opens_each_forward_when_its_port_listens(
        tmp_path: Path, qemu_stand_in: subprocess.Popen[bytes]) -> None:
    qmp = _FakeQmp(tmp_path / "qmp.sock")
    err = io.StringIO()
    fw = ListenForwarder(tmp_path / "listen.sock", tmp_path / "qmp.sock",
                         [(18080, 8080), (18081, 8080), (18443, 443)], err)
    guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    guest.connect(str(tmp_path / "listen.sock"))  # QEMU's chardev, at its start
    try:
        assert fw.connect(qemu_stand_in)
        assert fw.poll(qemu_stand_in) and qmp.commands == []  # nothing said yet
        guest.sendall(b"tcp 22\ntcp 80")  # a port nobody forwards; half a notice
        assert fw.poll(qemu_stand_in) and qmp.commands == []
        guest.sendall(b"80\n")
        assert fw.poll(qemu_stand_in)
        hmp = [c["arguments"]["command-line"] for c in qmp.commands
               if c["execute"] == "human-monitor-command"]
        assert hmp == ["hostfwd_add n0 tcp:127.0.0.1:18080-:8080",
                       "hostfwd_add n0 tcp:127.0.0.1:18081-:8080"]
        assert "guest port 8080 is listening: forwarded from 127.0.0.1:18080" in err.getvalue()
        guest.sendall(b"tcp 8080\n")  # listening again (another socket): already open
        assert fw.poll(qemu_stand_in) and len(qmp.commands) == 3  # capabilities, 2 adds
        guest.close()  # QEMU ended
        assert not fw.poll(qemu_stand_in)
    finally:
        fw.close()
        qmp.server.close()


def test_a_forward_qemu_cannot_open_says_why(
        tmp_path: Path, qemu_stand_in: subprocess.Popen[bytes]) -> None:
    qmp = _FakeQmp(tmp_path / "qmp.sock",
                   said="Could not set up host forwarding rule 'tcp:127.0.0.1:18080-:8080'\r\n")
    fw = ListenForwarder(tmp_path / "listen.sock", tmp_path / "qmp.sock", [(18080, 8080)],
                         io.StringIO())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as guest:
        guest.connect(str(tmp_path / "listen.sock"))
        assert fw.connect(qemu_stand_in)
        guest.sendall(b"tcp 8080\n")
        with pytest.raises(RunError, match=r"--forward 18080:8080: QEMU said: Could not set up "
                                           r"host forwarding rule 'tcp:127.0.0.1:18080-:8080'$"):
            fw.poll(qemu_stand_in)
    fw.close()
    qmp.server.close()


def test_no_wait_for_a_qemu_that_ended(tmp_path: Path) -> None:
    fw = ListenForwarder(tmp_path / "listen.sock", tmp_path / "qmp.sock", [(18080, 8080)],
                         io.StringIO())
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert not fw.connect(ended)
    fw.close()
