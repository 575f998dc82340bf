"""edge-service and sd_notify as installed on a device: the unit it would write (``--root``: for another machine,
so that the bundle under /tmp is accepted), and the datagrams it sends."""

import socket
from typing import List

import pytest

from edge.service.notify import Notifier

from .conftest import one_line, run


def dry_run(*argv: object):
    return run("edge-service", "install", "--dry-run", *argv)


def test_dry_run_renders_a_csi_unit_for_a_named_user(bundle, tmp_path):
    model = bundle.models["fp16_uint8"]
    done = dry_run("--user", "nobody", "--model", model, "--source", "csi://0", "--json", "--root", tmp_path)
    assert done.code == 0, done.err
    unit = done.out
    lines = unit.splitlines()
    for line in ("Type=notify", "User=nobody", "WatchdogSec=30s", "ProtectSystem=strict"):
        assert line in lines, line
    for key in ("After", "Wants"):  # a CSI camera needs Argus up first
        assert any(ln.startswith(key + "=") and "nvargus-daemon.service" in ln for ln in lines), key
    assert str(model) in unit and "csi://0" in unit and "--json" in unit


def test_dry_run_for_a_usb_camera_needs_no_argus(bundle, tmp_path):
    done = dry_run("--user", "nobody", "--model", bundle.models["fp32_uint8"], "--camera", "0", "--root", tmp_path)
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    assert "PrivateTmp=yes" in lines and not any(line.startswith("Wants=") for line in lines)


def test_a_dry_run_here_refuses_a_model_under_tmp_as_install_does(bundle):
    model = bundle.models["fp32_uint8"]
    if not str(model).startswith("/tmp/"):
        pytest.skip(f"the bundle is not under /tmp: {model}")
    done = dry_run("--user", "nobody", "--model", model, "--camera", "0")  # no --root: for this machine
    assert done.code == 2, (done.out, done.err)
    assert "under /tmp, which the service does not share" in one_line(done.err)


@pytest.mark.parametrize("argv, needle", [
    (["--user", "nobody", "--model", "/nonexistent/m.onnx", "--camera", "0"], "m.onnx"),
    (["--user", "root", "--camera", "0"], "root"),
])
def test_bad_install_input_is_one_line_and_exit_2(argv, needle, bundle):
    if "--model" not in argv:
        argv = argv + ["--model", str(bundle.models["fp16_uint8"])]
    done = dry_run(*argv)
    assert done.code == 2, (done.out, done.err)
    assert needle in one_line(done.err)


class Receiver:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(2.0)

    def received(self, count: int) -> List[str]:
        return [self.sock.recv(4096).decode("utf-8") for _ in range(count)]


def test_ready_status_watchdog_and_stopping_reach_the_socket(tmp_path):
    receiver = Receiver(str(tmp_path / "notify"))
    now = [100.0]
    notifier = Notifier(str(tmp_path / "notify"), watchdog_interval=15.0, clock=lambda: now[0])
    notifier.ready("classifying csi://0")
    for step in (0.0, 5.0, 14.0, 15.0, 29.0, 30.0):  # pings at 100, 115 and 130 only
        now[0] = 100.0 + step
        notifier.watchdog()
    notifier.status("tabby 83%\nINJECTED=1")
    notifier.stopping()
    notifier.close()
    assert receiver.received(6) == ["READY=1\nSTATUS=classifying csi://0", "WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1",
                                    "STATUS=tabby 83% INJECTED=1", "STOPPING=1"]
