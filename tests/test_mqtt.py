"""MQTT against a real Mosquitto broker and Prometheus metrics over HTTP; the on-disk spool alone.

The broker is started by the test on a free loopback port (skipped, with the reason, when the
``mosquitto`` binary is missing), stopped mid-run and started again; a subscriber in the test with a
persistent session counts what arrives. The model is a 3-class ONNX graph written with onnx's helper
API (the mean colour of the frame), so these tests need no torch and run on JetPack 4.6's Python 3.6
too (run them there with ``--noconftest``).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
from mqtt_broker import MOSQUITTO, Broker, Subscriber, free_port, scrape

from edge.sinks.spool import Message, Spool

REPO = Path(__file__).resolve().parents[1]
COLOURS = ("red", "green", "blue")
CLIP_FRAMES = 90


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture
def broker_factory(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install '.[mqtt]' in the edge-classifier checkout)")
    started: List[Broker] = []

    def make(password_file: Optional[Path] = None, extra: Optional[List[str]] = None) -> Broker:
        folder = tmp_path / f"broker{len(started)}"
        folder.mkdir()
        broker = Broker(folder, password_file, extra)
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


def write_colour_model(path: Path) -> Path:
    """A 3-class uint8 NHWC ONNX model: logits are the mean R, G, B (so a red frame is "red")."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 0.1, "W")
    nodes = [helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["pixels"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["mean", "W"], ["logits"])]
    graph = helper.make_graph(nodes, "colour", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                             ["N", 32, 32, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7  # onnxruntime 1.10 (JetPack 4.6) reads up to 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "labels", json.dumps(list(COLOURS))
    onnx.save(model, str(path))
    return path


def write_colour_clip(path: Path, frames: int = CLIP_FRAMES) -> Path:
    """An MJPG video whose colour (red, green, blue) changes every 10 frames."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    assert writer.isOpened()
    for number in range(frames):
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[..., 2 - (number // 10) % 3] = 200  # BGR
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    return write_colour_model(tmp_path_factory.mktemp("model") / "colour.onnx")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_colour_clip(tmp_path_factory.mktemp("clip") / "clip.avi")


def run_cli(*argv, env: Optional[Dict[str, str]] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environ = dict(os.environ, PYTHONPATH=str(REPO))
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, argv)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, env=environ, timeout=timeout)


# ---------------------------------------------------------------------------------------------- broker

def test_every_frame_reaches_a_subscriber_and_the_metrics_parse(broker_factory, colour_model, clip, tmp_path):
    """The issue's command: one message per frame, in order, with the same object as the --json line."""
    broker = broker_factory()
    subscriber = Subscriber(broker.port, "edge")
    metrics_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--model", str(colour_model), "--source", str(clip), "--loop",
         "--mqtt", f"mqtt://127.0.0.1:{broker.port}/edge", "--mqtt-every", "frame", "--mqtt-spool",
         str(tmp_path / "spool"), "--metrics-port", str(metrics_port), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert subscriber.wait_for(lambda: len(subscriber.labels()) >= 2 * CLIP_FRAMES), "no messages arrived"
        scraped = scrape(metrics_port)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    assert subscriber.wait_for(lambda: len({m["frame"] for m in subscriber.labels()}) >= len(printed))
    subscriber.close()
    received = subscriber.labels()
    assert [m["frame"] for m in received] == [p["frame"] for p in printed]  # each once, in order
    assert received == printed  # the payload is the --json line
    assert [m["label"] for m in received[:CLIP_FRAMES:10]] == list(COLOURS) * (CLIP_FRAMES // 30)
    status = [(p, r) for t, p, r in subscriber.messages if t == "edge/clip/status"]
    assert status[0] == ("online", False) and status[-1] == ("offline", False)
    frames = scraped[f"edge_classify_frames_total{{source={clip}}}"]  # one source has its label too
    assert frames >= 2 * CLIP_FRAMES
    assert scraped["edge_classify_mqtt_connected"] == 1
    assert scraped["edge_classify_mqtt_sent_total"] >= CLIP_FRAMES
    assert scraped["edge_classify_mqtt_dropped_total"] == 0
    assert scraped[f"edge_classify_stage_seconds_count{{source={clip},stage=infer}}"] == frames
    assert scraped[f"edge_classify_frame_age_seconds_count{{source={clip}}}"] == frames
    assert [k for k in scraped if k.startswith("edge_classify_prediction_score{")][0].split("label=")[1][:-1] \
        .split(",")[0] in COLOURS  # one series: the current label (index=..., label=...)
    assert any(k.startswith("edge_classify_info{") and "provider=" in k for k in scraped)
    from edge.sinks.metrics import METRIC_NAMES

    readme = (REPO / "docs" / "mqtt-and-metrics.md").read_text(encoding="utf-8")
    for name in METRIC_NAMES:  # every metric is served, and listed in the README
        assert any(k == name or k.startswith((name + "_", name + "{")) for k in scraped), name
        assert f"`{name}" in readme, name


def test_several_sources_publish_each_on_its_own_topic(broker_factory, colour_model, clip, tmp_path):
    """Two sources in one process, one connection: every frame of each on <prefix>/<its name>/label, in its own
    order; the connection's status on <prefix>/edge-classify/status; --metrics-port is refused (one line)."""
    broker = broker_factory()
    subscriber = Subscriber(broker.port, "edge")
    url = f"mqtt://127.0.0.1:{broker.port}/edge"
    done = run_cli("--model", colour_model, "--source", f"door={clip}", "--source", f"yard={clip}", "--mqtt", url,
                   "--mqtt-every", "frame", "--mqtt-spool", tmp_path / "spool", "--json")
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert subscriber.wait_for(lambda: len(subscriber.labels()) >= len(printed))
    with subscriber.lock:
        by_topic = {}
        for topic, payload, _ in subscriber.messages:
            by_topic.setdefault(topic, []).append(payload)
    subscriber.close()
    for name in ("door", "yard"):
        frames = [json.loads(m)["frame"] for m in by_topic[f"edge/{name}/label"]]
        assert frames == [p["frame"] for p in printed if p["source"] == name] == list(range(CLIP_FRAMES))
    assert by_topic["edge/edge-classify/status"][0] == "online"


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_nothing_is_lost_when_the_broker_restarts_mid_run(broker_factory, colour_model, clip, tmp_path, monkeypatch):
    """The broker stops while frames keep coming; after it is back every frame has arrived, in order of first
    arrival, duplicates (QoS 1) counted; meanwhile the metrics show the spool filling."""
    from edge.cli import build_parser, classify
    from edge.model.classify import Classifier
    from edge.settings import settings_from_args

    broker = broker_factory()
    subscriber = Subscriber(broker.port, "edge")
    metrics_port = free_port()
    args = build_parser().parse_args(
        ["--model", str(colour_model), "--source", str(clip), "--loop", "--mqtt",
         f"mqtt://127.0.0.1:{broker.port}/edge", "--mqtt-every", "frame", "--mqtt-spool", str(tmp_path / "spool"),
         "--metrics-port", str(metrics_port), "--json", "--stats-interval", "0"])
    unpaced = Classifier.classify
    monkeypatch.setattr(Classifier, "classify",  # a camera's pace, not a file's
                        lambda self, image, roi=None: (time.sleep(0.003), unpaced(self, image, roi))[1])

    stop = threading.Event()
    printed: List[str] = []
    result: List[int] = []

    def run() -> None:
        import contextlib
        import io

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            result.append(classify(settings_from_args(args), stop))
        printed.extend(buffer.getvalue().splitlines())

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert subscriber.wait_for(lambda: len(subscriber.labels()) >= 50), "no messages before the outage"
        broker.stop()
        assert subscriber.wait_for(lambda: scrape(metrics_port)["edge_classify_mqtt_queued"] >= 100), \
            "the spool did not fill while the broker was away"
        during = scrape(metrics_port)
        before_restart = len(subscriber.labels())
        broker.start()
        assert subscriber.wait_for(lambda: len(subscriber.labels()) >= before_restart + 200, 30), \
            "nothing arrived after the broker came back"
        after = scrape(metrics_port)
    finally:
        stop.set()
        worker.join(30)
    assert result == [0]
    frames = [json.loads(line)["frame"] for line in printed]
    assert frames == list(range(len(frames)))
    subscriber.wait_for(lambda: {m["frame"] for m in subscriber.labels()} >= set(frames), 20)
    subscriber.close()
    received = [m["frame"] for m in subscriber.labels()]
    first_arrivals = list(dict.fromkeys(received))
    missing = set(frames) - set(received)
    duplicated = len(received) - len(set(received))
    print(f"\noutage test: {len(frames)} frames classified, {len(received)} messages received, "
          f"{len(set(received))} distinct, {duplicated} duplicated, {len(missing)} missing; "
          f"spool at the broker's restart: {during['edge_classify_mqtt_queued']:.0f} messages; "
          f"connections: {after['edge_classify_mqtt_connects_total']:.0f}")
    assert not missing, sorted(missing)[:20]
    assert first_arrivals == sorted(first_arrivals)  # in order
    assert during["edge_classify_mqtt_connected"] == 0 and after["edge_classify_mqtt_connected"] == 1
    assert after["edge_classify_mqtt_connects_total"] == 2
    assert after["edge_classify_mqtt_dropped_total"] == 0


def test_a_wrong_password_is_one_line_and_exit_2_the_right_one_publishes(broker_factory, colour_model, clip,
                                                                         tmp_path):
    passwords = tmp_path / "passwords"
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([passwd, "-b", "-c", str(passwords), "camera", "s3cret"], check=True)
    broker = broker_factory(passwords)
    common = ["--model", colour_model, "--source", clip, "--max-frames", "5", "--mqtt", f"mqtt://127.0.0.1:"
              f"{broker.port}/edge", "--mqtt-spool", tmp_path / "spool", "-q"]

    wrong = run_cli(*common, env={"EDGE_MQTT_USERNAME": "camera", "EDGE_MQTT_PASSWORD": "guess"})
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1 and "refused" in wrong.stderr and "EDGE_MQTT_PASSWORD" in wrong.stderr
    assert "Traceback" not in wrong.stderr and "guess" not in wrong.stderr

    subscriber = Subscriber(broker.port, "edge", "camera", "s3cret")
    right = run_cli(*common, "--mqtt-every", "frame", env={"EDGE_MQTT_USERNAME": "camera",
                                                           "EDGE_MQTT_PASSWORD": "s3cret"})
    assert right.returncode == 0, right.stderr
    assert subscriber.wait_for(lambda: len(subscriber.labels()) >= 5)
    subscriber.close()
    assert [m["frame"] for m in subscriber.labels()] == [0, 1, 2, 3, 4]


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_a_broker_that_is_down_at_start_gets_the_results_later(broker_factory, colour_model, clip, tmp_path):
    """Down at start: the run goes on and spools; the next run (broker up) sends those first, in order."""
    broker = broker_factory()
    port = broker.port
    subscriber = Subscriber(port, "edge")
    broker.stop()
    common = ["--model", colour_model, "--source", clip, "--mqtt", f"mqtt://127.0.0.1:{port}/edge",
              "--mqtt-every", "change", "--mqtt-spool", tmp_path / "spool", "--json"]
    offline = run_cli(*common, "--max-frames", "30")
    assert offline.returncode == 0, offline.stderr
    assert "spooled" in offline.stderr
    broker.start()
    online = run_cli(*common, "--max-frames", "30")
    assert online.returncode == 0, online.stderr
    assert subscriber.wait_for(lambda: len(subscriber.labels()) >= 6)
    subscriber.close()
    # --mqtt-every change: the frames where the colour changes, from both runs, the offline run's first
    assert [(m["frame"], m["label"]) for m in subscriber.labels()] == [(0, "red"), (10, "green"), (20, "blue")] * 2


def make_certificates(folder: Path) -> Dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    files = {name: folder / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "san")}
    files["san"].write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*words: str) -> None:
        subprocess.run([openssl, *words], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=edge-test-ca",
        "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(files["server.key"]),
        "-out", str(files["server.csr"]))
    run("x509", "-req", "-days", "1", "-in", str(files["server.csr"]), "-CA", str(files["ca.crt"]), "-CAkey",
        str(files["ca.key"]), "-CAcreateserial", "-extfile", str(files["san"]), "-out", str(files["server.crt"]))
    return files


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_mqtts_verifies_the_broker_with_the_given_ca(broker_factory, colour_model, clip, tmp_path):
    certificates = make_certificates(tmp_path)
    tls_port = free_port()
    broker = broker_factory(extra=[f"listener {tls_port} 127.0.0.1", f"cafile {certificates['ca.crt']}",
                                   f"certfile {certificates['server.crt']}", f"keyfile {certificates['server.key']}"])
    subscriber = Subscriber(broker.port, "edge")  # on the plain listener
    common = ["--model", colour_model, "--source", clip, "--max-frames", "3", "--mqtt-every", "frame",
              "--mqtt", f"mqtts://127.0.0.1:{tls_port}/edge", "--mqtt-spool", tmp_path / "spool", "-q"]
    trusted = run_cli(*common, "--mqtt-ca", certificates["ca.crt"])
    assert trusted.returncode == 0, trusted.stderr
    assert subscriber.wait_for(lambda: len(subscriber.labels()) >= 3)
    subscriber.close()
    assert [m["frame"] for m in subscriber.labels()] == [0, 1, 2]
    untrusted = run_cli(*common)  # the system's CAs do not know this one
    assert untrusted.returncode == 2 and untrusted.stderr.count("\n") == 1
    assert "TLS" in untrusted.stderr and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr.upper().replace(" ", "_")
    assert "--mqtt-ca" in untrusted.stderr


@pytest.mark.slow
def test_a_broker_that_never_answers_does_not_hold_up_the_frames(colour_model, clip, tmp_path):
    """A port that accepts connections and says nothing (a hung broker, a firewall): the start waits for it
    at most CONNECT_TIMEOUT_S, then every frame is classified at full speed and spooled."""
    pytest.importorskip("paho.mqtt.client")
    from edge.sinks.mqtt import CONNECT_TIMEOUT_S

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        started = time.monotonic()
        result = run_cli("--model", colour_model, "--source", clip, "--mqtt-every", "frame", "--json",
                         "--mqtt", f"mqtt://127.0.0.1:{silent.getsockname()[1]}/edge", "--mqtt-spool", tmp_path / "s")
        took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == CLIP_FRAMES and "spooled" in result.stderr
    assert took < CONNECT_TIMEOUT_S + 8
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert spool.queued == CLIP_FRAMES + 1  # all waiting for the next run, with the retained model message
    spool.close()


# ---------------------------------------------------------------------------------------------- no broker

@pytest.mark.parametrize("flag, message", [
    ("mqtt://user:pw@127.0.0.1/edge", "EDGE_MQTT_USERNAME"),
    ("http://127.0.0.1/edge", "mqtt://host"),
    ("mqtt://127.0.0.1:99999/edge", "port"),
    ("mqqt://user:pw@127.0.0.1/edge", "EDGE_MQTT_USERNAME"),  # a mistyped scheme must not echo the password
])
def test_bad_mqtt_urls_are_one_line_and_exit_2(colour_model, clip, tmp_path, flag, message):
    pytest.importorskip("paho.mqtt.client")
    result = run_cli("--model", colour_model, "--source", clip, "--mqtt", flag, "--mqtt-spool", tmp_path / "s")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "pw" not in result.stderr


def test_a_ca_file_that_is_not_a_certificate_is_one_line_and_exit_2(colour_model, clip, tmp_path):
    pytest.importorskip("paho.mqtt.client")
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    result = run_cli("--model", colour_model, "--source", clip, "--mqtt", "mqtts://127.0.0.1:1/edge",
                     "--mqtt-ca", ca, "--mqtt-spool", tmp_path / "s")
    assert result.returncode == 2, result.stderr
    assert "TLS" in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr


def test_mqtt_with_image_and_a_taken_metrics_port_are_usage_errors(colour_model, clip, tmp_path):
    image = tmp_path / "red.png"
    import cv2

    cv2.imwrite(str(image), np.full((40, 40, 3), (0, 0, 200), np.uint8))
    result = run_cli("--model", colour_model, "--image", image, "--mqtt", "mqtt://127.0.0.1/edge")
    assert result.returncode == 2 and "--camera and --source" in result.stderr
    pytest.importorskip("prometheus_client")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        result = run_cli("--model", colour_model, "--source", clip, "--metrics-port", taken.getsockname()[1], "-q")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--metrics-port" in result.stderr


def test_a_missing_extra_names_it(colour_model, clip, tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # A sitecustomize that makes both libraries unimportable, as on a device without the extras.
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['paho'] = None\n"
                                              "sys.modules['prometheus_client'] = None\n")
    environ = {"PYTHONPATH": f"{blocker}{os.pathsep}{REPO}"}
    mqtt = run_cli("--model", colour_model, "--source", clip, "--mqtt", "mqtt://127.0.0.1/edge", "-q", env=environ)
    assert mqtt.returncode == 2 and "'.[mqtt]'" in mqtt.stderr and mqtt.stderr.count("\n") == 1
    metrics = run_cli("--model", colour_model, "--source", clip, "--metrics-port", "0", "-q", env=environ)
    assert metrics.returncode == 2 and "'.[metrics]'" in metrics.stderr


def test_topic_names_and_urls():
    from edge.sinks.mqtt import PublisherError, parse_url
    from edge.sources.sourcelist import short_name as topic_name

    assert topic_name("csi://0") == "csi0"
    assert topic_name("0") == "camera0"
    assert topic_name("/dev/video1") == "video1"
    assert topic_name("/srv/videos/front door.avi") == "front-door"
    assert topic_name("rtsp://user:pass@10.0.0.2:554/live/ch1") == "10.0.0.2-live-ch1"
    target = parse_url("mqtts://broker.local/home/garage/")
    assert (target.host, target.port, target.prefix, target.tls) == ("broker.local", 8883, "home/garage", True)
    assert parse_url("mqtt://h").prefix == "edge-classify" and parse_url("mqtt://h").port == 1883
    with pytest.raises(PublisherError):
        parse_url("mqtt://h/a/+/b")


# ---------------------------------------------------------------------------------------------- spool

def messages(first: int, count: int) -> List[Message]:
    return [Message("edge/cam/label", json.dumps({"frame": n})) for n in range(first, first + count)]


def frames_of(batch) -> List[int]:
    return [json.loads(m.payload)["frame"] for _, m in batch]


def test_spool_keeps_order_across_a_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    assert all(spool.append(m) for m in messages(0, 10))
    batch = spool.take(4)
    assert frames_of(batch) == [0, 1, 2, 3]
    spool.remove([row for row, _ in batch[:2]])  # 0 and 1 reached the broker; 2 and 3 were in flight
    assert frames_of(spool.take(3)) == [4, 5, 6]  # each handed out once per run
    assert spool.queued == 8
    spool.close()

    again = Spool(tmp_path, max_bytes=1 << 20)  # a restart: sending resumes at the first unacknowledged one
    assert again.queued == 8
    again.append(Message("edge/cam/label", json.dumps({"frame": 10})))
    batch = again.take(100)
    assert frames_of(batch) == list(range(2, 11))
    again.remove([row for row, _ in batch])
    assert again.queued == 0 and again.dropped == 0 and again.take(10) == []
    again.close()


def test_spool_bound_drops_the_oldest_unsent_and_counts_them(tmp_path):
    spool = Spool(tmp_path, max_bytes=16384)
    for message in messages(0, 3):
        spool.append(message)
    in_flight = spool.take(3)  # handed to the broker: not the bound's to drop
    for message in messages(3, 997):  # about 60 KB: far past the bound
        spool.append(message)
    assert spool.size <= 16384 + 3 * 64
    assert spool.dropped > 0 and spool.queued + spool.dropped == 1000
    kept = frames_of(spool.take(2000))
    assert kept == list(range(1000 - len(kept), 1000))  # the newest, in order, none skipped
    spool.remove([row for row, _ in in_flight])
    assert spool.queued == len(kept)
    spool.close()


def test_spool_drops_a_damaged_row_and_refuses_a_second_user(colour_model, clip, tmp_path):
    import sqlite3

    from edge.sinks.spool import DATABASE, SpoolError

    spool = Spool(tmp_path, max_bytes=1 << 20)
    for message in messages(0, 3):
        spool.append(message)
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path, max_bytes=1 << 20)
    held = run_cli("--model", colour_model, "--source", clip, "-q", "--mqtt", "mqtt://127.0.0.1:1/edge", "--mqtt-spool",
                   tmp_path) if _has_paho() else None
    spool.close()
    if held is not None:  # another process: one line, exit 2
        assert held.returncode == 2 and held.stderr.count("\n") == 1 and "in use" in held.stderr, held.stderr
    with sqlite3.connect(str(tmp_path / DATABASE)) as db:  # damage on disk: bytes that are not UTF-8
        db.execute("UPDATE messages SET payload = X'FFFE' WHERE id = (SELECT MIN(id) + 1 FROM messages)")
    db.close()
    reopened = Spool(tmp_path, max_bytes=1 << 20)
    assert reopened.queued == 3
    reopened.append(messages(3, 1)[0])
    assert frames_of(reopened.take(10)) == [0, 2, 3]
    assert reopened.dropped == 1 and reopened.queued == 3
    reopened.close()


def _has_paho() -> bool:
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        return False
    return True


def test_spool_folder_must_be_ours_alone_and_no_link(tmp_path):
    from edge.sinks.spool import DATABASE, SpoolError

    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SpoolError, match="symbolic link"):
        Spool(link, 1 << 20)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(SpoolError, match="other users can write"):
        Spool(shared, 1 << 20)
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (planted / DATABASE).symlink_to(victim)
    with pytest.raises(SpoolError, match="symbolic link"):
        Spool(planted, 1 << 20)
    assert victim.read_text() == "precious\n"
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # a root run in a folder another user controls
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(str(theirs), 65534, 65534)
        with pytest.raises(SpoolError, match="another user"):
            Spool(theirs, 1 << 20)
        assert not (theirs / DATABASE).exists()


# ---------------------------------------------------------------------------------------------- issue 20

def test_a_password_without_a_user_name_is_one_line_and_exit_2(colour_model, clip, tmp_path):
    result = run_cli("--model", colour_model, "--source", clip, "--mqtt", "mqtt://127.0.0.1/edge", "--mqtt-spool",
                     tmp_path / "s", env={"EDGE_MQTT_USERNAME": "", "EDGE_MQTT_PASSWORD": "s3cret"})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "EDGE_MQTT_USERNAME" in result.stderr and "s3cret" not in result.stderr


class MuteBroker:
    """A port that accepts MQTT clients and never acknowledges: with ``connack`` it lets them in (CONNACK) and
    then swallows every PUBLISH; without, it never answers the CONNECT."""

    def __init__(self, connack: bool) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        self.connack = connack
        self.received = 0
        self.accepted = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            connection, _ = self.server.accept()
        except OSError:
            return
        self.accepted.set()
        with connection:
            first = connection.recv(65536)
            if self.connack and first:
                connection.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
            while first:
                self.received += len(first)
                first = connection.recv(65536)

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("connack", [False, True], ids=["no-connack", "no-puback"])
def test_sigterm_while_the_broker_never_acknowledges_ends_within_a_second(colour_model, clip, tmp_path, connack):
    """Waiting for the broker's first answer (start) or for acknowledgements (close) never holds up a stop."""
    pytest.importorskip("paho.mqtt.client")
    broker = MuteBroker(connack)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--model", str(colour_model), "--source", str(clip), "--loop", "-q",
         "--mqtt", f"mqtt://127.0.0.1:{broker.port}/edge", "--mqtt-every", "frame", "--mqtt-spool",
         str(tmp_path / "spool")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert broker.accepted.wait(30), "edge-classify never connected"
        deadline = time.monotonic() + 30
        while connack and broker.received < 5000 and time.monotonic() < deadline:  # results are being sent
            time.sleep(0.05)
        time.sleep(0.2)
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        took = time.monotonic() - stopped
    finally:
        if process.poll() is None:
            process.kill()
        broker.close()
    print(f"\nSIGTERM with a broker that never acknowledges ({'after' if connack else 'before'} CONNACK): "
          f"exit after {took:.2f} s")
    assert process.returncode == 0, err
    assert took < 1.0, err
    assert "Traceback" not in err


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_a_damaged_spool_entry_is_dropped_and_counted_and_the_rest_is_sent(broker_factory, colour_model, clip,
                                                                          tmp_path):
    """Left from an earlier run: a message whose topic holds a wildcard (it can never be sent) between two good
    ones. It is dropped and counted; the others and this run's results are sent, and the summary says so."""
    spool = Spool(tmp_path / "spool", 1 << 20)
    spool.append(Message("edge/clip/label", json.dumps({"frame": 1000})))
    spool.append(Message("edge/+/label", json.dumps({"frame": 1001})))
    spool.append(Message("edge/clip/label", json.dumps({"frame": 1002})))
    spool.close()
    broker = broker_factory()
    subscriber = Subscriber(broker.port, "edge")
    result = run_cli("--model", colour_model, "--source", clip, "--max-frames", "3", "--mqtt-every", "frame",
                     "--mqtt", f"mqtt://127.0.0.1:{broker.port}/edge", "--mqtt-spool", tmp_path / "spool")
    assert result.returncode == 0, result.stderr
    assert subscriber.wait_for(lambda: len(subscriber.labels()) >= 5)
    subscriber.close()
    assert [m["frame"] for m in subscriber.labels()] == [1000, 1002, 0, 1, 2]
    # 5 labels and the retained <prefix>/<source>/model message (edge.model.swap) at start
    assert "6 sent, 0 waiting in the spool, 1 dropped" in result.stderr, result.stderr
    assert "wildcard" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 1 MiB tmpfs (root only): a disk that fills up for real."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mount = shutil.which("mount")
    if mount is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    if subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m,mode=700", "tmpfs", str(folder)],
                      stderr=subprocess.DEVNULL).returncode != 0:
        pytest.skip("this machine does not let us mount a tmpfs")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)  # -l: even if a failed test left a file open


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(str(filler), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return filler


def publisher_cpu_s() -> float:
    """CPU seconds used so far by the publisher's threads and paho's (not the rest of the test process, whose
    leftovers from earlier tests would make a whole-process measure flaky)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for thread in threading.enumerate():
        if thread.name.startswith(("mqtt-", "paho")) and thread.native_id is not None:
            try:
                fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended meanwhile
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_a_full_disk_loses_only_the_new_message_and_sending_resumes(broker_factory, tiny_filesystem):
    from edge.sinks.mqtt import Credentials, Publisher, parse_url

    broker = broker_factory()
    subscriber = Subscriber(broker.port, "edge")
    publisher = Publisher(parse_url(f"mqtt://127.0.0.1:{broker.port}/edge"), Credentials(), "cam",
                          Spool(tiny_filesystem / "spool", 1 << 20))
    publisher.start()

    def send(*frames: int) -> None:
        for frame in frames:
            publisher.submit("edge/cam/label", json.dumps({"frame": frame}))

    send(0, 1, 2)
    assert subscriber.wait_for(lambda: len(subscriber.labels()) == 3)
    filler = fill(tiny_filesystem)
    send(3)  # no room for it: dropped and counted (unless sqlite still had room in pages it already holds)
    dropped = publisher.stats.dropped
    assert dropped in (0, 1)
    cpu = publisher_cpu_s()
    time.sleep(1.0)
    assert publisher_cpu_s() - cpu < 0.5  # nothing spins on the full disk (a spinner would use about 1 s)
    filler.unlink()
    send(4, 5)
    assert subscriber.wait_for(lambda: len(subscriber.labels()) == 6 - dropped)  # the rest all arrive
    assert publisher.stats.dropped == dropped
    publisher.close()
    subscriber.close()
    kept = [0, 1, 2, 4, 5] if dropped else [0, 1, 2, 3, 4, 5]
    assert [m["frame"] for m in subscriber.labels()] == kept
    assert (publisher.stats.sent, publisher.stats.queued, publisher.stats.dropped) == (len(kept), 0, dropped)


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_nothing_is_lost_when_the_process_is_killed(broker_factory, colour_model, clip, tmp_path):
    """kill -9 while the broker is away: every result it had printed is in the spool, and the next run sends it."""
    broker = broker_factory()
    port = broker.port
    subscriber = Subscriber(port, "edge")
    broker.stop()
    process = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "--model", str(colour_model), "--source", str(clip), "--loop", "--json",
         "--mqtt", f"mqtt://127.0.0.1:{port}/edge", "--mqtt-every", "frame", "--mqtt-spool", str(tmp_path / "spool")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    printed = []
    for line in process.stdout:
        printed.append(json.loads(line)["frame"])
        if len(printed) >= 150:
            break
    process.kill()
    process.communicate(timeout=30)
    broker.start()
    later = run_cli("--model", colour_model, "--source", clip, "--max-frames", "1", "--mqtt-name", "later",
                    "--mqtt", f"mqtt://127.0.0.1:{port}/edge", "--mqtt-spool", tmp_path / "spool", "-q")
    assert later.returncode == 0, later.stderr
    killed = lambda: [json.loads(p)["frame"] for t, p, _ in subscriber.messages if t == "edge/clip/label"]  # noqa
    assert subscriber.wait_for(lambda: len(killed()) >= len(printed) - 1)
    subscriber.close()
    arrived = killed()
    assert arrived[:len(printed) - 1] == printed[:-1]  # the last printed one may not have been spooled yet
    assert arrived == list(range(len(arrived)))


# ---------------------------------------------------------------------------------------------- service

def test_service_install_passes_the_flags_and_keeps_the_login_out_of_argv(tmp_path, monkeypatch, capsys):
    import re
    import stat

    from edge.service.cli import main as service

    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    monkeypatch.setenv("EDGE_MQTT_USERNAME", "camera")
    monkeypatch.setenv("EDGE_MQTT_PASSWORD", 'pa ss"$word')
    root = tmp_path / "root"
    assert service(["install", "--model", str(model), "--user", "edge", "--root", str(root), "--source", "csi://0",
                    "--mqtt", "mqtt://broker.local/home", "--mqtt-every", "frame", "--metrics-port", "9101"]) == 0
    env_file = root / "etc/default/edge-classify"
    env = env_file.read_text()
    unit = (root / "etc/systemd/system/edge-classify.service").read_text()

    def value(text: str, key: str) -> List[str]:
        return re.findall(rf"^{key}=(.*)$", text, re.MULTILINE)

    assert value(env, "EDGE_ARGS") == ['"--mqtt mqtt://broker.local/home --mqtt-every frame --metrics-port 9101 '
                                       '--mqtt-spool /var/lib/edge-classify/mqtt"']
    assert value(env, "EDGE_MQTT_USERNAME") == ["camera"]
    assert value(env, "EDGE_MQTT_PASSWORD") == ['"pa ss\\"\\$word"']  # systemd's quoting
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "word" not in " ".join(value(unit, "ExecStart"))
    assert "network-online.target" in value(unit, "Wants")  # a broker is on the network
    assert service(["install", "--model", str(model), "--user", "edge", "--root", str(root), "--dry-run",
                    "--source", "csi://0", "--mqtt", "mqtt://broker.local/home"]) == 0
    shown = capsys.readouterr().out
    assert "EDGE_MQTT_USERNAME=camera" in shown and "word" not in shown  # a dry run does not print the password


@pytest.mark.parametrize("flags, message", [
    (["--mqtt", "mqtt://u:p@broker/edge"], "EDGE_MQTT_USERNAME"),
    (["--mqtt", "mqtt://broker/edge", "--mqtt-spool", "/srv/spool"], "/var/lib/edge-classify"),
])
def test_service_install_refuses_a_login_in_the_url_and_a_spool_it_cannot_write(tmp_path, flags, message, capsys):
    from edge.service.cli import main as service

    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    code = service(["install", "--model", str(model), "--user", "edge", "--root", str(tmp_path / "root"),
                    "--camera", "0", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "root").exists()


# ---------------------------------------------------------------------------------------------- which frames

class FakePublisher:
    def __init__(self) -> None:
        self.sent: List[dict] = []

    def submit(self, topic: str, payload: str, retain: bool = False) -> None:
        self.sent.append(json.loads(payload))


class FakePrediction:
    def __init__(self, label: str) -> None:
        self.label, self.index, self.score = label, COLOURS.index(label), 0.9


@pytest.mark.parametrize("every, expected", [
    ("frame", list(range(12))),
    ("change", [0, 4, 8]),
    ("5", [0, 5, 10]),
])
def test_mqtt_every_picks_the_frames(every, expected):
    from edge.sinks.telemetry import Telemetry

    telemetry = Telemetry(FakePublisher(), None, "edge/cam/label", every, heartbeat_s=0)
    for number in range(12):
        label = COLOURS[number // 4]
        telemetry.send({"frame": number, "label": label}, FakePrediction(label), {}, 1.0, 30.0, "cam")
    assert [m["frame"] for m in telemetry.publisher.sent] == expected


def test_the_heartbeat_resends_a_steady_label():
    from edge.sinks.telemetry import Telemetry

    now = [100.0]
    telemetry = Telemetry(FakePublisher(), None, "edge/cam/label", "change", heartbeat_s=30.0, clock=lambda: now[0])
    for number in range(3):
        now[0] += 1.0  # 29 s after the start at most: no heartbeat yet
        telemetry.send({"frame": number, "label": "red"}, FakePrediction("red"), {}, 1.0, 30.0, "cam")
    now[0] += 30.0
    telemetry.send({"frame": 3, "label": "red"}, FakePrediction("red"), {}, 1.0, 30.0, "cam")
    telemetry.send({"frame": 4, "label": "red"}, FakePrediction("red"), {}, 1.0, 30.0, "cam")
    assert [m["frame"] for m in telemetry.publisher.sent] == [0, 3]


def test_service_with_mqtt_and_metrics_keeps_the_hardening_score(tmp_path):
    import re

    from edge.service.cli import main as service

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    scores = []
    for name, flags in (("plain", []), ("fleet", ["--mqtt", "mqtt://hub/edge", "--metrics-port", "9101"])):
        root = tmp_path / name
        assert service(["install", "--model", str(model), "--user", "edge", "--root", str(root), "--camera", "0",
                        *flags]) == 0
        result = subprocess.run([analyze, "security", "--offline=true",
                                 str(root / "etc/systemd/system/edge-classify.service")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
        if match is None:
            pytest.skip("this systemd-analyze cannot rate a unit offline")
        scores.append(float(match.group(1)))
    assert scores[1] == scores[0]
