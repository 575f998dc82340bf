"""edge-service and sd_notify: the rendered unit against systemd-analyze, a real notify socket, and
edge-classify on a looping video under a fake systemd (READY, watchdog rate, STATUS, SIGTERM)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
from cli_checks import error_line
from conftest import write_photo_video

import edge.service.cli
from edge.service.notify import Notifier, socket_address, watchdog_interval
from edge.service.cli import main

REPO = Path(__file__).resolve().parents[1]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs it)")
MAX_EXPOSURE = 2.5


# ------------------------------------------------------------------------------------------ a notify socket

class NotifySocket:
    """A datagram socket bound like systemd's, recording (monotonic time, message) as they arrive."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock, self.env_value = sock, env_value
        self.messages: List[Tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> List[str]:
        return [text for _, text in self.messages]

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(text) for text in self.texts()):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify"
        sock.bind(str(path))
        env_value = str(path)
    else:
        name = f"edge-classifier-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    listener = NotifySocket(sock, env_value)
    yield listener
    listener.close()


def settle(listener: NotifySocket, count: int) -> List[str]:
    listener.wait_for(lambda _: len(listener.messages) >= count, 2.0)
    time.sleep(0.05)
    return listener.texts()


# ------------------------------------------------------------------------------------------ Notifier

def test_ready_status_stopping(notify_socket):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify_socket.env_value})
    assert notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("classifying csi://0")
    notifier.status("tabby 83% | 29.8 fps\nINJECTED=1")  # a newline must not start another assignment
    notifier.watchdog()  # no watchdog asked for: nothing
    notifier.stopping()
    notifier.close()
    notifier.status("after close")  # a no-op, not an error
    assert settle(notify_socket, 3) == ["READY=1\nSTATUS=classifying csi://0",
                                        "STATUS=tabby 83% | 29.8 fps INJECTED=1", "STOPPING=1"]


def test_watchdog_pings_at_half_the_interval(tmp_path):
    environ = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environment(environ).watchdog_interval == pytest.approx(0.1)
    # A simulated second of frames every millisecond on an injected clock: exact, however loaded the machine.
    # No listening thread: a datagram sent on a local socket is queued by the time sendto() returns, so a
    # non-blocking read after each call says whether that call pinged.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        now = [0.0]
        notifier = Notifier(socket_address(environ["NOTIFY_SOCKET"]), watchdog_interval(environ), clock=lambda: now[0])
        pinged_at = []
        for step in range(1001):  # a loop that calls watchdog() after every "frame"
            now[0] = step / 1000
            notifier.watchdog()
            try:
                message = sock.recv(4096)
            except BlockingIOError:
                continue
            assert message == b"WATCHDOG=1"
            pinged_at.append(now[0])
        notifier.close()
    # One at once, then one every 0.1 s: the first frame at or after each tenth of a second (1 ms frames).
    gaps = np.diff(pinged_at)
    assert pinged_at[0] == 0.0 and len(pinged_at) >= 10 and 0.1 <= gaps.min() and gaps.max() <= 0.1011, pinged_at


def test_watchdog_of_another_process_is_not_ours(notify_socket):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "200000",
                                          "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.enabled and notifier.watchdog_interval is None
    for _ in range(1000):
        notifier.watchdog()
    notifier.ready()
    assert settle(notify_socket, 1) == ["READY=1"]


@pytest.mark.parametrize("environ", [{}, {"WATCHDOG_USEC": "200000"}, {"NOTIFY_SOCKET": ""},
                                     {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_without_a_notify_socket_nothing_happens(environ):
    notifier = Notifier.from_environment(environ)
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.status("y")
    notifier.watchdog()
    notifier.stopping()
    notifier.close()


@pytest.mark.parametrize("usec", ["", "0", "-5", "soon"])
def test_no_watchdog_without_a_positive_interval(usec, notify_socket):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": usec})
    assert notifier.enabled and notifier.watchdog_interval is None


def test_send_errors_are_logged_once_and_never_raised(tmp_path, caplog):
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens"),
                                          "WATCHDOG_USEC": "1000"})
    with caplog.at_level(logging.WARNING, logger="edge.service.notify"):
        notifier.ready("x")
        for _ in range(5):
            notifier.watchdog()
            time.sleep(0.001)
        notifier.status("y")
        notifier.stopping()
    notifier.close()
    warnings = [r for r in caplog.records if r.name == "edge.service.notify"]
    assert len(warnings) == 1 and "nobody-listens" in warnings[0].getMessage()


# ------------------------------------------------------------------------------------------ the unit

def install(root: Path, model: Path, *more: str) -> int:
    return main(["install", "--model", str(model), "--user", "edge", "--root", str(root), *more])


def rendered(root: Path, name: str = "edge-classify") -> Tuple[str, str]:
    return ((root / "etc/systemd/system" / f"{name}.service").read_text(),
            (root / "etc/default" / name).read_text())


def keys(unit: str, key: str) -> List[str]:
    return re.findall(rf"^{key}=(.*)$", unit, re.MULTILINE)


SOURCES = {
    "csi": ["--source", "csi://0"],
    "camera": ["--camera", "0"],
    "rtsp": ["--source", "rtsp://user:p%40ss@192.168.1.20:554/stream"],
    "home": ["--source", "/dev/video1"],  # with a model "under /home" (ProtectHome=read-only)
    "output": ["--source", "csi://1", "--output", "OUT"],  # the worst case: csi, /home and a writable folder
    "sources": ["--sources", "LIST"],  # several sources in one unit: a CSI camera and a stream
}


@pytest.fixture(params=list(SOURCES))
def unit_file(request, tmp_path, model_file, monkeypatch) -> Path:
    listed = tmp_path / "sources.txt"
    listed.write_text("door=csi://0\nyard=rtsp://192.168.1.21/stream roi=0,0,640,360\n")
    flags = [str(tmp_path / "out" / "labelled.mp4") if f == "OUT" else str(listed) if f == "LIST" else f
             for f in SOURCES[request.param]]
    if request.param in ("home", "output"):
        monkeypatch.setattr(edge.service.cli, "HOME_DIRS", (str(tmp_path),))
    assert install(tmp_path / "root", model_file, *flags, "--json") == 0
    return tmp_path / "root/etc/systemd/system/edge-classify.service"


@needs_analyze
def test_systemd_analyze_verify_says_nothing_about_the_unit(unit_file):
    result = subprocess.run([ANALYZE, "verify", str(unit_file)], capture_output=True, text=True, timeout=60)
    about_it = [line for line in (result.stdout + result.stderr).splitlines()
                if "edge-classify" in line or str(unit_file.parent) in line]
    assert result.returncode == 0 and not about_it, result.stdout + result.stderr


@needs_analyze
def test_security_exposure_is_low(unit_file):
    result = subprocess.run([ANALYZE, "security", "--offline=true", str(unit_file)], capture_output=True, text=True,
                            timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"{unit_file.name}: exposure {match.group(1)}")
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_contents(tmp_path, model_file):
    assert install(tmp_path / "root", model_file, "--source", "csi://0", "--json", "--smooth", "5") == 0
    unit, env = rendered(tmp_path / "root")
    assert unit.startswith("# Written by edge-service")
    assert not re.search(r"@[A-Z_]+@", unit), "a placeholder was left"
    for key, value in [("Type", "notify"), ("NotifyAccess", "main"), ("WatchdogSec", "30s"), ("User", "edge"),
                       ("SupplementaryGroups", "video"), ("EnvironmentFile", "/etc/default/edge-classify"),
                       ("Restart", "on-failure"), ("KillSignal", "SIGTERM"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("CacheDirectory", "edge-classify"), ("PrivateTmp", "no"),
                       ("CapabilityBoundingSet", ""), ("NoNewPrivileges", "yes")]:
        assert keys(unit, key) == [value], key
    assert "nvargus-daemon.service" in keys(unit, "After")[0] and keys(unit, "Wants") == ["nvargus-daemon.service"]
    assert "EDGE_CACHE=/var/cache/edge-classify" in " ".join(keys(unit, "Environment"))
    for absent in ("PrivateDevices", "DeviceAllow", "DevicePolicy", "ProtectClock", "MemoryDenyWriteExecute"):
        assert not keys(unit, absent), absent
    (exec_start,) = keys(unit, "ExecStart")
    program = exec_start.split()[0]
    assert Path(program).is_absolute() and os.access(program, os.X_OK)
    assert exec_start.endswith("--model ${EDGE_MODEL} --source ${EDGE_SOURCE} $EDGE_ARGS")
    assert keys(env, "EDGE_MODEL") == [str(model_file)] and keys(env, "EDGE_SOURCE") == ["csi://0"]
    assert keys(env, "EDGE_ARGS") == ['"--json --smooth 5"']
    env_file = tmp_path / "root/etc/default/edge-classify"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # a stream URL may carry a password


def test_several_sources_are_one_unit_with_a_sources_file(tmp_path, model_file, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "shop.mp4").write_bytes(b"")
    listed = tmp_path / "sources.txt"
    listed.write_text(f"door=csi://0\nshop={videos / 'shop.mp4'}\n")
    assert install(tmp_path / "root", model_file, "--sources", str(listed), "--max-batch", "4") == 0
    unit, env = rendered(tmp_path / "root")
    assert keys(unit, "ExecStart")[0].endswith("--model ${EDGE_MODEL} --sources ${EDGE_SOURCE} $EDGE_ARGS")
    assert keys(env, "EDGE_SOURCE") == [str(listed)] and keys(env, "EDGE_ARGS") == ['"--max-batch 4"']
    assert keys(unit, "Wants") == ["nvargus-daemon.service"]  # one of them is a CSI camera
    listed.write_text(f"door=csi://0\nshop={videos / 'gone.mp4'}\n")
    assert install(tmp_path / "root2", model_file, "--sources", str(listed)) == 2
    assert capsys.readouterr().err.endswith("gone.mp4: no such video file\n")
    assert install(tmp_path / "root3", model_file, "--source", "csi://0", "--source", "csi://1") == 2
    assert "pass --sources FILE" in capsys.readouterr().err
    listed.write_text("door=csi://0\nshop=videos/shop.mp4\n")
    assert install(tmp_path / "root6", model_file, "--sources", str(listed)) == 2
    assert "videos/shop.mp4 is a relative path" in capsys.readouterr().err
    listed.write_text("door=csi://0 roi=1,2\n")
    assert install(tmp_path / "root4", model_file, "--sources", str(listed)) == 2
    assert "sources.txt:1: roi" in capsys.readouterr().err
    listed.write_text("door=csi://0\nyard=csi://1\n")
    assert install(tmp_path / "root5", model_file, "--sources", str(listed), "--serve", "8080", "--metrics-port",
                   "9101") == 0  # one live view and one metrics endpoint for all the sources
    unit, env = rendered(tmp_path / "root5")
    assert keys(env, "EDGE_ARGS") == ['"--serve 8080 --metrics-port 9101"'] and "--sources ${EDGE_SOURCE}" in unit


def test_a_usb_camera_keeps_a_private_tmp_and_needs_no_argus(tmp_path, model_file):
    assert install(tmp_path / "root", model_file, "--camera", "2") == 0
    unit, env = rendered(tmp_path / "root")
    assert keys(unit, "PrivateTmp") == ["yes"] and not keys(unit, "Wants") and not keys(unit, "ReadWritePaths")
    assert keys(env, "EDGE_SOURCE") == ["2"] and keys(env, "EDGE_ARGS") == [""]


def test_values_are_quoted_for_systemd(tmp_path, model_file, monkeypatch):
    pipeline = 'nvarguscamerasrc sensor-id=1 ! nvvidconv ! video/x-raw, format=BGRx ! appsink name="$x"'
    assert install(tmp_path / "root", model_file, "--source", pipeline, "--name", "cam1") == 0
    unit, env = rendered(tmp_path / "root", "cam1")
    assert keys(env, "EDGE_SOURCE") == ['"nvarguscamerasrc sensor-id=1 ! nvvidconv ! video/x-raw, format=BGRx ! '
                                        'appsink name=\\"\\$x\\""']
    assert keys(unit, "Wants") == ["nvargus-daemon.service"]  # argus in a pipeline is a CSI camera too
    assert keys(unit, "StateDirectory") == ["cam1"] and keys(unit, "EnvironmentFile") == ["/etc/default/cam1"]


def test_relative_paths_become_absolute(tmp_path, model_file, monkeypatch):
    monkeypatch.chdir(model_file.parent)
    (model_file.parent / "names.txt").write_text("a\nb\n")
    (model_file.parent / "clip.avi").write_bytes(b"avi")
    assert install(tmp_path / "root", Path(model_file.name), "--source", "clip.avi", "--labels", "names.txt",
                   "--output=out.mp4", "--loop") == 0
    unit, env = rendered(tmp_path / "root")
    folder = model_file.parent
    assert keys(env, "EDGE_MODEL") == [str(model_file)] and keys(env, "EDGE_SOURCE") == [str(folder / "clip.avi")]
    assert keys(env, "EDGE_ARGS") == [f'"--labels {folder / "names.txt"} --output={folder / "out.mp4"} --loop"']
    assert keys(unit, "ReadWritePaths") == [str(folder)]


def test_install_then_uninstall_leave_nothing_behind(tmp_path, model_file, capsys):
    root = tmp_path / "root"
    root.mkdir()
    assert install(root, model_file, "--source", "csi://0") == 0
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "etc/default/edge-classify", "etc/systemd/system/edge-classify.service",
        "var/cache/edge-classify/.edge-service", "var/lib/edge-classify/.edge-service"]  # the folders it owns
    assert install(root, model_file, "--camera", "1") == 0  # again: replaces, leaves no temporary file
    assert main(["uninstall", "--root", str(root)]) == 0
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "var/cache/edge-classify/.edge-service", "var/lib/edge-classify/.edge-service"]  # state stays
    assert install(root, model_file, "--camera", "1") == 0
    assert main(["uninstall", "--purge", "--root", str(root)]) == 0
    assert list(root.iterdir()) == []
    assert main(["uninstall", "--root", str(root)]) == 1  # nothing left to remove
    assert "no service edge-classify here" in capsys.readouterr().err


def test_dry_run_prints_and_writes_nothing(tmp_path, model_file, capsys, monkeypatch):
    root = tmp_path / "root"
    assert install(root, model_file, "--source", "csi://0", "--dry-run") == 0
    out = capsys.readouterr().out
    assert not root.exists()
    assert f"# ---- {root}/etc/systemd/system/edge-classify.service" in out and "Type=notify" in out
    assert f"# ---- {root}/etc/default/edge-classify" in out and f"EDGE_MODEL={model_file}" in out
    monkeypatch.setattr(edge.service.cli, "PRIVATE_TMP_DIRS", ())  # this test's files live in /tmp
    assert main(["install", "--model", str(model_file), "--camera", "0", "--user", "nobody", "--dry-run"]) == 0
    assert "# ---- /etc/systemd/system/edge-classify.service" in capsys.readouterr().out


def test_uninstall_leaves_units_it_did_not_write(tmp_path, capsys):
    unit = tmp_path / "root/etc/systemd/system/ssh.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/usr/sbin/sshd -D\n")
    assert main(["uninstall", "--name", "ssh", "--root", str(tmp_path / "root")]) == 1
    assert "not written by edge-service" in capsys.readouterr().err and unit.is_file()


def test_missing_model_is_one_line(tmp_path, capsys):
    assert install(tmp_path / "root", tmp_path / "nope.onnx", "--camera", "0") == 2
    assert "model file not found" in error_line(capsys, "edge-service") and not (tmp_path / "root").exists()


@pytest.mark.parametrize("case", ["root is a file", "etc is a file", "read-only folder"])
def test_unwritable_root_is_one_line(case, tmp_path, model_file, capsys):
    root = tmp_path / "root"
    if case == "root is a file":
        root.write_text("not a folder")
    elif case == "etc is a file":
        root.mkdir()
        (root / "etc").write_text("not a folder")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders anyway")
        root.mkdir(mode=0o555)
    assert install(root, model_file, "--camera", "0") == 1
    assert re.search(r"is not a folder|cannot write .*(Not a directory|Permission denied)", error_line(capsys, "edge-service"))
    if root.is_dir():
        assert not [p for p in root.rglob("*") if p.is_file() and p.name != "etc"]


@pytest.mark.parametrize("argv", [[], ["install"], ["remove"], ["status", "--bogus"], ["uninstall", "extra"],
                                  ["install", "--model", "m.onnx", "--source", "a", "--camera", "0"]])
def test_usage_errors_exit_2_without_a_traceback(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"^edge-service( \w+)?: error: ", err, re.MULTILINE) and "Traceback" not in err, err


def test_install_without_root_says_sudo(model_file, monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["install", "--model", str(model_file), "--camera", "0"]) == 1
    assert "run it with sudo" in error_line(capsys, "edge-service")
    assert main(["uninstall"]) == 1
    assert "run it with sudo" in error_line(capsys, "edge-service")


def test_no_user_and_no_sudo_user_asks_for_one(tmp_path, model_file, monkeypatch, capsys):
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["install", "--model", str(model_file), "--camera", "0", "--root", str(tmp_path / "r")]) == 2
    assert "--user USER" in error_line(capsys, "edge-service")
    monkeypatch.setenv("SUDO_USER", "jetson")
    assert main(["install", "--model", str(model_file), "--camera", "0", "--root", str(tmp_path / "r")]) == 0
    assert keys(rendered(tmp_path / "r")[0], "User") == ["jetson"]


@pytest.fixture()
def fake_systemd(tmp_path, monkeypatch):
    """A systemctl that logs its arguments and answers status/show; the machine's / moved into tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    script = bin_dir / "systemctl"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$1" in
  status) echo "* $5.service - edge-classify image classifier"; echo "     Active: active (running)"; exit 0;;
  show) echo "tabby 83% | 29.8 fps | 1200 frames | 0 dropped";;
esac
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runtime = tmp_path / "run-systemd-system"
    runtime.mkdir()
    monkeypatch.setattr(edge.service.cli, "SYSTEMD_RUNTIME", runtime)
    monkeypatch.setattr(edge.service.cli, "SYSTEM_ROOT", tmp_path / "sysroot")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return log


def test_install_and_uninstall_drive_systemctl(fake_systemd, tmp_path, model_file, capsys, monkeypatch):
    assert main(["install", "--model", str(model_file), "--camera", "0", "--user", "nobody"]) == 2
    assert "under /tmp, which the service does not share" in error_line(capsys, "edge-service")
    monkeypatch.setattr(edge.service.cli, "PRIVATE_TMP_DIRS", ())  # this test's files live in /tmp
    assert main(["install", "--model", str(model_file), "--camera", "0", "--user", "nobody"]) == 0
    assert "journalctl -u edge-classify -f" in capsys.readouterr().out
    unit = tmp_path / "sysroot/etc/systemd/system/edge-classify.service"
    assert keys(unit.read_text(), "User") == ["nobody"]
    state = tmp_path / "sysroot/var/lib/edge-classify"
    (state / "mqtt").mkdir()  # what the service would have written
    assert main(["uninstall", "--purge"]) == 0
    assert not unit.exists() and not state.exists()
    assert fake_systemd.read_text().splitlines() == [
        "daemon-reload", "enable --quiet edge-classify", "restart --no-block edge-classify",
        "disable --now --quiet edge-classify", "daemon-reload", "reset-failed edge-classify"]


def test_install_refuses_a_user_that_does_not_exist(fake_systemd, model_file, capsys, monkeypatch):
    monkeypatch.setattr(edge.service.cli, "PRIVATE_TMP_DIRS", ())
    assert main(["install", "--model", str(model_file), "--camera", "0", "--user", "no-such-user-here"]) == 2
    assert "no user 'no-such-user-here' here" in error_line(capsys, "edge-service")


def test_status_shows_systemd_and_the_last_status_line(fake_systemd, capfd):
    assert main(["status", "--name", "cam1"]) == 0
    out = capfd.readouterr().out
    assert "Active: active (running)" in out
    assert out.rstrip().endswith("last status: tabby 83% | 29.8 fps | 1200 frames | 0 dropped")
    assert fake_systemd.read_text().splitlines() == ["status --no-pager --lines 10 cam1",
                                                     "show --property StatusText --value cam1"]


def test_the_templates_ship_as_package_data():
    from importlib import resources

    for name in ("edge-classify.service", "edge-classify.env"):
        shipped = resources.files("edge.systemd").joinpath(name)
        assert shipped.read_text() == (REPO / "systemd" / name).read_text()


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def looping_video(tmp_path_factory, photos) -> Path:
    """A short MJPG .avi of real photos, 4 frames each."""
    return write_photo_video(tmp_path_factory.mktemp("service-video") / "photos.avi", photos,
                             ("chelsea", "coffee", "rocket", "astronaut"), 4)


@pytest.mark.slow
def test_edge_classify_under_a_fake_systemd(photo_onnx, looping_video, photo_model, tmp_path):
    """READY after the first frame, WATCHDOG=1 every WATCHDOG_USEC / 2, STATUS with a label, and SIGTERM:
    STOPPING=1 and exit 0 within a second."""
    _, labels = photo_model
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    listener = NotifySocket(sock, str(tmp_path / "notify"))
    exe = shutil.which("edge-classify")
    command = ([exe] if exe else [sys.executable, "-m", "edge.cli"]) + [
        "--model", str(photo_onnx), "--source", str(looping_video), "--loop"]
    # Pings every 0.5 s: half a second of room for a frame on a loaded machine before a ping is late.
    env = dict(os.environ, NOTIFY_SOCKET=listener.env_value, WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp_path)
    try:
        assert listener.wait_for(lambda text: text.startswith("READY=1"), 120), (listener.texts(), log.read_text())
        assert process.poll() is None
        time.sleep(3.5)
        ready_at = next(t for t, text in listener.messages if text.startswith("READY=1"))
        pings = [t for t, text in listener.messages if text == "WATCHDOG=1" and t >= ready_at]
        gaps = np.diff(pings)
        print(f"watchdog: {len(pings)} pings in 3.5 s, gaps median {np.median(gaps):.3f} s, "
              f"min {gaps.min():.3f} s, max {gaps.max():.3f} s (asked: 0.500 s)")
        # A ping goes out with the first frame done after the half interval: 0.5 s plus at most a frame.
        assert len(pings) >= 5 and 0.48 <= np.median(gaps) <= 0.75, gaps
        assert gaps.min() > 0.45, gaps  # not more often than asked
        assert gaps.max() < 1.0, gaps  # never as late as WATCHDOG_USEC, when systemd would kill it
        statuses = [text for text in listener.texts() if text.startswith("STATUS=") or "\nSTATUS=" in text]
        assert any(label in text for text in statuses for label in labels), statuses
        print("first messages:", listener.texts()[:4])
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
        took = time.monotonic() - sent
        print(f"SIGTERM to exit: {took:.3f} s")
        assert code == 0, log.read_text()
        assert took < 1.0
        assert listener.wait_for(lambda text: text == "STOPPING=1", 2), listener.texts()
        assert "Traceback" not in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        listener.close()
