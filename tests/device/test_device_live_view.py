"""edge-classify --serve as installed on a device (Python 3.6 up, urllib only): the live view's page, picture,
status, events and metrics over plain HTTP, and a bind beyond loopback refused without a token."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

from .conftest import command, one_line, run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, timeout: float = 5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.getcode(), reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_the_live_view_over_http(bundle):
    port = free_port()
    base = "http://127.0.0.1:{}".format(port)
    environ = dict(os.environ)
    environ.pop("EDGE_SERVE_TOKEN", None)
    argv = ["--model", bundle.models["fp32_uint8"], "--source", bundle.clip, "--loop", "--json",
            "--serve", "127.0.0.1:{}".format(port), "--stats-interval", "0"]
    process = subprocess.Popen(command("edge-classify") + [str(a) for a in argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, universal_newlines=True, env=environ)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            try:
                code, _, body = get(base + "/api/status")
                status = json.loads(body.decode("utf-8")) if code == 200 else None
            except OSError:
                status = None
            if status and status["frame"] is not None:
                break
            time.sleep(0.2)
        assert status and status["frame"] is not None, "no frame in the live view"
        assert status["model"]["labels"] >= 2 and status["label"] and status["serve"]["encodes"] == 0
        code, headers, page = get(base + "/")
        assert code == 200 and b"<html" in page and headers["Content-Type"].startswith("text/html")
        code, headers, jpeg = get(base + "/snapshot.jpg")
        assert code == 200 and jpeg[:2] == b"\xff\xd8" and int(headers["X-Frame"]) >= 0
        with urllib.request.urlopen(base + "/stream.mjpg", timeout=10) as stream:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            part = stream.read(200)
        assert part.startswith(b"--frame\r\nContent-Type: image/jpeg") and b"X-Captured: " in part
        with urllib.request.urlopen(base + "/api/events?every=frame", timeout=10) as events:
            lines = []
            while not any(line.startswith(b"data: ") for line in lines):
                lines.append(events.readline())
        record = json.loads([line for line in lines if line.startswith(b"data: ")][0][6:].decode("utf-8"))
        assert record["frame"] >= 0 and record["label"]
        code, _, metrics = get(base + "/metrics")
        assert (code == 200 and b"edge_classify_frames_total" in metrics) or (code == 501 and b".[metrics]" in metrics)
        assert get(base + "/nothing")[0] == 404
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_beyond_loopback_without_a_token_is_refused(bundle):
    done = run("edge-classify", "--model", bundle.models["fp32_uint8"], "--source", bundle.clip,
               "--serve", "0.0.0.0:{}".format(free_port()), env={"EDGE_SERVE_TOKEN": ""})
    assert done.code == 2
    assert "EDGE_SERVE_TOKEN" in one_line(done.err)
