"""A new model without a restart: edge-classify swaps on SIGHUP, refuses what it cannot trust, and
``edge-service deploy`` switches a (fake-systemd) service and rolls back by itself.

The runs are real ``edge-classify`` processes on a looping video with ``--json``; the models are the photo
model of conftest (resnet18 whose labels are the photo names) and copies of it with other labels.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import onnx
import pytest

import edge.service.cli
from conftest import write_photo_video
from edge.service.cli import main as service_main

REPO = Path(__file__).resolve().parents[1]
VIDEO_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


def relabelled(model: Path, out: Path, rename: Callable[[str], str]) -> Path:
    """A copy of ``model`` (same graph) whose label names are ``rename``d."""
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps([rename(label) for label in json.loads(prop.value)])
    onnx.save(proto, str(out))
    return out


def replace_file(source: Path, target: Path) -> None:
    """``source``'s bytes at ``target`` by rename, as a deploy does."""
    temporary = target.with_name(target.name + ".tmp")
    shutil.copyfile(str(source), str(temporary))
    os.replace(str(temporary), str(target))


@pytest.fixture(scope="module")
def video(tmp_path_factory, photos) -> Path:
    return write_photo_video(tmp_path_factory.mktemp("swap-video") / "photos.avi", photos, VIDEO_PHOTOS, 3)


@pytest.fixture(scope="module")
def models(photo_onnx, tmp_path_factory) -> dict:
    """``a``: the photo model; ``b``: the same with labels ``b-NAME``; ``broken``: not a model;
    ``shuffled``: labels moved one place (wrong on every photo)."""
    folder = tmp_path_factory.mktemp("swap-models")
    names = json.loads(next(p.value for p in onnx.load(str(photo_onnx)).metadata_props if p.key == "labels"))
    broken = folder / "broken.onnx"
    broken.write_bytes(b"\x08\x07 this is not an onnx graph" * 100)
    custom = onnx.load(str(photo_onnx))  # an operator domain outside ONNX's own (edge.model.backends.modelcheck)
    custom.opset_import.append(onnx.helper.make_opsetid("com.example.custom", 1))
    onnx.save(custom, str(folder / "custom.onnx"))
    return {"a": photo_onnx, "b": relabelled(photo_onnx, folder / "b.onnx", lambda name: f"b-{name}"),
            "broken": broken, "custom": folder / "custom.onnx",
            "shuffled": relabelled(photo_onnx, folder / "shuffled.onnx",
                                   lambda name: names[(names.index(name) + 1) % len(names)])}


@pytest.fixture(scope="module")
def canary(tmp_path_factory, photos) -> Path:
    """DIR/<label>/*.jpg: the video's photos under their own names."""
    import cv2

    folder = tmp_path_factory.mktemp("canary")
    for name in VIDEO_PHOTOS:
        (folder / name).mkdir()
        assert cv2.imwrite(str(folder / name / "1.jpg"), photos[name][..., ::-1])
    return folder


class Running:
    """An edge-classify process; its stdout JSON lines and stderr lines collected as they come."""

    def __init__(self, args: List[str], cwd: Path, env: Optional[dict] = None) -> None:
        command = [sys.executable, "-m", "edge.cli", *args]
        environment = dict(env or os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(cwd),
                                        env=environment, universal_newlines=True)
        self.records: List[dict] = []
        self.log: List[Tuple[int, str]] = []  # (frames seen when the line came, line)
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _read_out(self) -> None:
        for line in self.process.stdout:
            self.records.append(json.loads(line))

    def _read_err(self) -> None:
        for line in self.process.stderr:
            self.log.append((len(self.records), line.rstrip("\n")))

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if self.process.poll() is not None:
                return predicate()
            time.sleep(0.05)
        return False

    def logged(self, text: str) -> Optional[int]:
        """The frame count when a stderr line holding ``text`` came, or None."""
        return next((frames for frames, line in self.log if text in line), None)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reload(self, wait_for_text: str, count: int = 1, timeout: float = 60) -> int:
        """SIGHUP, then the frame count when the ``count``-th line holding ``wait_for_text`` came."""
        self.process.send_signal(signal.SIGHUP)
        assert self.wait_for(lambda: sum(wait_for_text in line for _, line in self.log) >= count, timeout), \
            self.stderr()
        return [frames for frames, line in self.log if wait_for_text in line][count - 1]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def stderr(self) -> str:
        return "\n".join(line for _, line in self.log)


def start(model: Path, video: Path, tmp_path: Path, *more: str, env: Optional[dict] = None) -> Running:
    running = Running(["--model", str(model), "--source", str(video), "--loop", "--json", "--stats-interval", "0",
                       *more], tmp_path, env)
    assert running.wait_for(lambda: len(running.records) >= 5, 120), running.stderr()
    return running


def labels_after(running: Running, frames: int) -> List[str]:
    return [record["label"] for record in running.records[frames:]]


def assert_no_frame_missing(records: List[dict]) -> None:
    numbers = [record["frame"] for record in records]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a frame number is missing"


def longest_gap_ms(records: List[dict], around: int, span: int = 30) -> float:
    times = [record["time"] for record in records[max(0, around - span):around + span]]
    return float(np.max(np.diff(times)) * 1e3)


@pytest.mark.slow
def test_sighup_swaps_between_frames_and_broken_or_disallowed_models_are_refused(models, video, tmp_path):
    running_model = tmp_path / "model.onnx"
    shutil.copyfile(str(models["a"]), str(running_model))
    run = start(running_model, video, tmp_path)
    try:
        assert all(not label.startswith("b-") for label in labels_after(run, 0))
        rss_before = run.rss_mib()
        replace_file(models["b"], running_model)
        sent = time.monotonic()
        swapped_at = run.reload("model swapped")
        took = time.monotonic() - sent
        assert run.wait_for(lambda: len(run.records) >= swapped_at + 20, 60)
        rss_after = run.rss_mib()
        after = labels_after(run, swapped_at + 3)  # the loop may finish a frame or two on the old model
        assert after and all(label.startswith("b-") for label in after), after[:10]
        before = labels_after(run, 0)[:swapped_at - 5]
        assert before and not any(label.startswith("b-") for label in before)
        gap = longest_gap_ms(run.records, swapped_at)
        line = run.stderr().split("model swapped")[1].splitlines()[0]
        usual = float(np.median(np.diff([r["time"] for r in run.records[:max(2, swapped_at - 5)]])) * 1e3)
        print(f"\nswap: SIGHUP to swap log line {took * 1e3:.0f} ms ({line.strip()}); longest gap between frames "
              f"around it {gap:.0f} ms (median before {usual:.0f} ms); RSS {rss_before:.0f} MiB before, "
              f"{rss_after:.0f} MiB after")

        replace_file(models["broken"], running_model)
        refused_at = run.reload("model refused")
        assert run.wait_for(lambda: len(run.records) >= refused_at + 10, 60)
        assert all(label.startswith("b-") for label in labels_after(run, refused_at)), "the old model stopped"
        replace_file(models["custom"], running_model)
        refused_at = run.reload("model refused", count=2)
        assert run.wait_for(lambda: len(run.records) >= refused_at + 10, 60)
        assert all(label.startswith("b-") for label in labels_after(run, refused_at)), "the old model stopped"
        refusal = [line for _, line in run.log if "model refused" in line]
        assert len(refusal) == 2 and "custom domain 'com.example.custom'" in refusal[1], refusal
        assert "Traceback" not in run.stderr()
        print("\n".join(refusal))
        assert_no_frame_missing(run.records)
        assert run.process.poll() is None
    finally:
        code = run.stop()
    assert code == 0, run.stderr()


@pytest.mark.slow
def test_a_model_below_the_canary_is_refused_and_one_as_good_is_swapped_in(models, video, canary, tmp_path):
    running_model = tmp_path / "model.onnx"
    shutil.copyfile(str(models["a"]), str(running_model))
    state = tmp_path / "state"
    state.mkdir()
    env = dict(os.environ, STATE_DIRECTORY=str(state))
    run = start(running_model, video, tmp_path, "--canary", str(canary), env=env)
    try:
        replace_file(models["shuffled"], running_model)
        refused_at = run.reload("model refused")
        line = [line for _, line in run.log if "model refused" in line][0]
        assert "canary accuracy 0.0% is below the running model's 100.0%" in line, line
        assert run.wait_for(lambda: len(run.records) >= refused_at + 5, 60)
        names = set(VIDEO_PHOTOS) | {"camera", "hubble_deep_field", "frame640"}
        assert {r["label"] for r in run.records[refused_at:]} <= names  # still model a's labels
        facts = json.loads((state / "active-model.json").read_text())
        assert facts["last_refusal"]["canary_new"] == 0.0 and facts["last_refusal"]["canary_old"] == 1.0

        relabel_same = tmp_path / "same.onnx"  # the same answers, another file: passes the canary
        relabelled(models["a"], relabel_same, lambda name: name)
        proto = onnx.load(str(relabel_same))
        proto.producer_version = "other"
        onnx.save(proto, str(relabel_same))
        replace_file(relabel_same, running_model)
        run.reload("model swapped")
        facts = json.loads((state / "active-model.json").read_text())
        from edge.model.swap import file_sha256

        assert facts["sha256"] == file_sha256(relabel_same) and facts["swaps"] == 1 and facts["refusals"] == 1
        assert facts["last_swap"]["canary_new"] == 1.0
        assert_no_frame_missing(run.records)
    finally:
        code = run.stop()
    assert code == 0, run.stderr()


def test_canary_flags_are_checked(tmp_path, capsys):
    from edge.cli import main

    for argv, expected in (
            (["--image", "x.jpg", "--canary", str(tmp_path)], "not --image"),
            (["--source", "v.avi", "--canary", str(tmp_path / "none")], "not a folder"),
            (["--source", "v.avi", "--canary", str(tmp_path)], "no photos"),
            (["--source", "v.avi", "--canary-min", "0.5"], "--canary-min goes with --canary")):
        assert main(["--model", "m.onnx", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err


# ------------------------------------------------------------------------------ edge-service deploy

@pytest.fixture()
def service(tmp_path, monkeypatch, models):
    """A fake systemd whose ``reload`` sends SIGHUP to the pid in ``tmp_path/pid`` (when there is one), and an
    installed-looking service: /etc/default/edge-classify naming a model under tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "systemctl.log"
    script = bin_dir / "systemctl"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$1" in
  reload) [ -f {tmp_path}/no-reload ] && {{ echo "Job type reload is not applicable for unit $2.service." >&2; exit 1; }}
          [ -f {tmp_path}/pid ] && kill -HUP "$(cat {tmp_path}/pid)"; exit 0;;
  is-active) [ -f {tmp_path}/inactive ] && exit 3; exit 0;;
esac
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runtime = tmp_path / "run-systemd-system"
    runtime.mkdir()
    root = tmp_path / "sysroot"
    monkeypatch.setattr(edge.service.cli, "SYSTEMD_RUNTIME", runtime)
    monkeypatch.setattr(edge.service.cli, "SYSTEM_ROOT", root)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    state = root / "var/lib/edge-classify"
    state.mkdir(parents=True)
    model = state / "model.onnx"
    shutil.copyfile(str(models["a"]), str(model))
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/edge-classify").write_text(f"EDGE_MODEL={model}\nEDGE_SOURCE=csi://0\n")
    return model, state, log


def last_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return (captured.out.strip().splitlines() or [""])[-1]


@pytest.mark.slow
def test_deploy_switches_a_running_service_and_rollback_goes_back(service, models, video, tmp_path, capsys):
    from edge.model.swap import file_sha256

    model, state, _ = service
    run = start(model, video, tmp_path, env=dict(os.environ, STATE_DIRECTORY=str(state)))
    try:
        (tmp_path / "pid").write_text(str(run.process.pid))
        assert run.wait_for(lambda: (state / "active-model.json").exists(), 30)
        started = time.monotonic()
        assert service_main(["deploy", str(models["b"]), "--timeout", "60", "--settle", "0"]) == 0
        took = time.monotonic() - started
        assert last_line(capsys).startswith("switched: edge-classify runs b.onnx")
        with capsys.disabled():
            print(f"\ndeploy: {took:.2f} s from copy to switched")
        assert file_sha256(model) == file_sha256(models["b"])
        assert file_sha256(model.with_name("model.onnx.previous")) == file_sha256(models["a"])
        frames = len(run.records)
        assert run.wait_for(lambda: len(run.records) >= frames + 5, 30)
        assert run.records[-1]["label"].startswith("b-")

        assert service_main(["deploy", str(models["broken"]), "--timeout", "60", "--settle", "0"]) == 1
        line = last_line(capsys)
        assert line.startswith("refused: edge-classify keeps its model"), line
        assert file_sha256(model) == file_sha256(models["b"])  # the running model's file is back

        assert service_main(["rollback", "--timeout", "60"]) == 0
        assert last_line(capsys).startswith("switched: edge-classify runs the previous model again")
        assert file_sha256(model) == file_sha256(models["a"])
        assert json.loads((state / "active-model.json").read_text())["sha256"] == file_sha256(models["a"])
        assert_no_frame_missing(run.records)
    finally:
        code = run.stop()
    assert code == 0, run.stderr()


def test_deploy_rolls_back_when_the_service_does_not_report(service, models, capsys):
    from edge.model.swap import file_sha256

    model, _, log = service  # no process: the reload reaches nobody
    assert service_main(["deploy", str(models["b"]), "--timeout", "0.5", "--settle", "0"]) == 1
    line = last_line(capsys)
    assert line.startswith("rolled back: edge-classify did not report sha256"), line
    assert file_sha256(model) == file_sha256(models["a"])
    assert log.read_text().splitlines() == ["reload edge-classify", "reload edge-classify"]


def test_deploy_rolls_back_when_the_service_stops(service, models, tmp_path, capsys):
    from edge.model.swap import file_sha256

    model, _, _ = service
    (tmp_path / "inactive").write_text("")  # systemctl is-active: no (a crash while loading, a restart)
    assert service_main(["deploy", str(models["b"]), "--timeout", "30", "--settle", "0"]) == 1
    assert last_line(capsys).startswith("rolled back: edge-classify stopped while loading b.onnx")
    assert file_sha256(model) == file_sha256(models["a"])


def test_a_unit_without_exec_reload_changes_nothing(service, models, tmp_path, capsys):
    from edge.model.swap import file_sha256

    model, _, _ = service
    (tmp_path / "no-reload").write_text("")
    assert service_main(["deploy", str(models["b"])]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reload is not applicable" in err[0], err
    assert file_sha256(model) == file_sha256(models["a"]) and not model.with_name("model.onnx.previous").exists()


def test_deploy_usage_errors_are_one_line_and_exit_2(service, models, tmp_path, capsys):
    model, _, log = service
    for argv, expected in ((["deploy", str(tmp_path / "missing.onnx")], "no such model file"),
                           (["deploy", str(models["a"]).replace(".onnx", ".ts")], "no such model file"),
                           (["deploy", str(model)], "the service's own model file"),
                           (["rollback"], "no ") ,
                           (["deploy", str(models["b"]), "--timeout", "0"], "--timeout")):
        assert service_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
    ts = tmp_path / "m.ts"
    ts.write_bytes(b"x")
    assert service_main(["deploy", str(ts)]) == 2
    assert "export the same format" in capsys.readouterr().err
    assert not log.exists()


# ------------------------------------------------------------------------------ in process: the slot, its listeners

class FakeClassifier:
    """Answers every frame with one label; ``released`` once swapped out."""

    def __init__(self, label: str) -> None:
        from types import SimpleNamespace

        self.label = label
        self.released = False
        self.spec = SimpleNamespace(arch="fake", precision="fp32", num_classes=2, input_side=8)
        self.backend = SimpleNamespace(provider="CPUExecutionProvider")

    def classify(self, image):
        from types import SimpleNamespace

        return SimpleNamespace(label=self.label)

    def release(self) -> None:
        self.released = True


def fake_load(path: Path) -> FakeClassifier:
    text = path.read_text()
    if text.startswith("broken"):
        raise ValueError("not a model")
    return FakeClassifier(text.strip())  # "cat " is another file that answers as "cat" does


def adopted(slot, timeout: float = 10.0):
    """What the slot hands the loop within ``timeout`` (None: nothing but events)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = slot.adopt()
        if new is not None:
            return new
        if slot.last_refusal is not None:
            return None
        time.sleep(0.02)
    return None


@pytest.mark.slow  # seconds of real time (a broker restart, a browser, a kill): the full suite runs it
def test_watch_model_swaps_when_the_file_is_replaced_and_tells_every_listener(tmp_path):
    from edge.model.swap import ModelSlot, file_sha256

    model = tmp_path / "m.onnx"
    model.write_text("cat")
    first = FakeClassifier("cat")
    slot = ModelSlot(first, model, fake_load, watch=True, state_file=tmp_path / "active-model.json")
    events: List[dict] = []
    slot.listeners.append(events.append)
    slot.start()
    try:
        (tmp_path / "new").write_text("dog")
        os.replace(str(tmp_path / "new"), str(model))
        new = adopted(slot, 10.0)  # polled every 2 s, then half a second for the copy to settle
        assert new is not None and new.label == "dog" and first.released
        assert [e["event"]["event"] for e in events] == ["active", "swap"]
        state = json.loads((tmp_path / "active-model.json").read_text())
        assert state["sha256"] == file_sha256(model) and state["swaps"] == 1
        assert state["last_swap"]["old_sha256"] == events[0]["sha256"]
    finally:
        slot.close()


def test_a_broken_model_and_a_worse_one_are_refused_and_the_old_one_stays(tmp_path, photos):
    import cv2

    from edge.model.swap import Canary, ModelSlot

    canary = tmp_path / "canary"
    (canary / "cat").mkdir(parents=True)
    assert cv2.imwrite(str(canary / "cat" / "1.png"), photos["chelsea"][..., ::-1])
    model = tmp_path / "m.onnx"
    model.write_text("cat")
    first = FakeClassifier("cat")
    slot = ModelSlot(first, model, fake_load, canary=Canary.read(canary))
    slot.start()
    try:
        for content, reason in (("broken", "not a model"), ("dog", "canary accuracy 0.0% is below")):
            model.write_text(content)
            slot.last_refusal = None
            slot.request()
            assert adopted(slot) is None
            assert reason in slot.last_refusal["reason"] and slot.classifier is first and not first.released
        assert slot.refusals == 2 and slot.swaps == 0
        model.write_text("cat ")  # another file, the same answers: as good as the running one
        slot.last_refusal = None
        slot.request()
        assert adopted(slot).label == "cat" and slot.last_swap["canary_new"] == slot.last_swap["canary_old"] == 1.0
    finally:
        slot.close()


def test_listeners_prometheus_mqtt_and_the_live_view():
    from edge.sinks.metrics import Metrics
    from edge.sinks.telemetry import Telemetry
    from edge.sinks.web import LiveView, ServeOptions
    from edge.sinks.httpd import Address

    facts = {"sha256": "ab" * 32, "file": "/m.onnx", "arch": "fake", "precision": "fp32", "labels": 2, "swaps": 2,
             "refusals": 1,
             "last_swap": {"sha256": "ab" * 32}, "last_refusal": {"reason": "canary"}, "event": {"event": "swap"}}
    metrics = Metrics(["v.avi"])
    published = []

    class Publisher:
        target = type("Target", (), {"prefix": "edge"})
        name = "cam1"

        def submit(self, topic, payload, retain=False):
            published.append((topic, json.loads(payload), retain))

    Telemetry(Publisher(), metrics).model_changed(facts)
    text = metrics.exposition()[0].decode()
    assert f'edge_classify_model_info{{sha256="{"ab" * 32}"}} 1.0' in text
    assert "edge_classify_model_swaps_total 2.0" in text and "edge_classify_model_refusals_total 1.0" in text
    assert published == [("edge/cam1/model", facts, True)]
    view = LiveView(ServeOptions(Address("127.0.0.1", 0), model="/m.onnx"), ["v.avi"], FakeClassifier("cat"))
    try:
        view.model_changed(facts)
        model = view.status()["model"]
        assert model["sha256"] == "ab" * 32 and model["swaps"] == 2 and model["last_refusal"] == {"reason": "canary"}
    finally:
        view.close()


# ------------------------------------------------------------------------------ remote updates over MQTT

def test_model_orders_are_checked_before_anything_is_fetched():
    from edge.model.remote import OrderError, parse_order

    sha = "a" * 64
    assert parse_order(json.dumps({"url": "https://h/m.onnx", "sha256": sha.upper()}).encode()).sha256 == sha
    assert parse_order(json.dumps({"url": "http://127.0.0.1:8/m.onnx", "sha256": sha}).encode())
    for payload, expected in ((b"not json", "JSON object"), (b'{"url": "https://h/m.onnx"}', "JSON object"),
                              (json.dumps({"url": "https://h/m", "sha256": "abc"}).encode(), "64 hex digits"),
                              (json.dumps({"url": "http://example.com/m.onnx", "sha256": sha}).encode(), "https://"),
                              (json.dumps({"url": "file:///etc/passwd", "sha256": sha}).encode(), "https://")):
        with pytest.raises(OrderError, match=expected):
            parse_order(payload)


@pytest.mark.slow
def test_a_model_ordered_over_mqtt_is_fetched_verified_and_swapped_in(models, video, tmp_path):
    import functools
    import http.server

    from mqtt_broker import MOSQUITTO, Broker, Subscriber
    from edge.model.swap import file_sha256

    if MOSQUITTO is None:
        pytest.skip("no mosquitto here")
    broker = Broker(tmp_path)
    broker.start()
    served = tmp_path / "served"
    served.mkdir()
    shutil.copyfile(str(models["b"]), str(served / "b.onnx"))
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    subscriber = Subscriber(broker.port, "edge")
    running_model = tmp_path / "model.onnx"
    shutil.copyfile(str(models["a"]), str(running_model))
    run = start(running_model, video, tmp_path, "--mqtt", f"mqtt://127.0.0.1:{broker.port}/edge", "--mqtt-name",
                "cam", "--mqtt-spool", str(tmp_path / "spool"), "--mqtt-allow-model-updates")

    def model_messages() -> List[dict]:
        with subscriber.lock:
            return [json.loads(p) for t, p, retained in subscriber.messages if t == "edge/cam/model"]

    try:
        url, sha = f"http://127.0.0.1:{server.server_port}/b.onnx", file_sha256(models["b"])
        assert subscriber.wait_for(lambda: len(model_messages()) >= 1, 30)
        subscriber.client.publish("edge/cam/model/set", json.dumps({"url": url, "sha256": "0" * 64}), qos=1)
        assert subscriber.wait_for(lambda: model_messages()[-1]["refusals"] == 1, 60), run.stderr()
        assert "is not the ordered" in model_messages()[-1]["last_refusal"]["reason"]
        subscriber.client.publish("edge/cam/model/set", json.dumps({"url": url, "sha256": sha}), qos=1)
        assert subscriber.wait_for(lambda: model_messages()[-1]["swaps"] == 1, 60), run.stderr()
        facts = model_messages()[-1]
        assert facts["sha256"] == sha and facts["last_swap"]["source"] == url
        assert file_sha256(running_model) == sha  # a restart runs it too
        assert file_sha256(running_model.with_name("model.onnx.previous")) == file_sha256(models["a"])
        assert not list(tmp_path.glob(".model.onnx.*"))  # no download left behind
        frames = len(run.records)
        assert run.wait_for(lambda: len(run.records) >= frames + 5, 30)
        assert run.records[-1]["label"].startswith("b-")
        assert_no_frame_missing(run.records)
    finally:
        code = run.stop()
        subscriber.close()
        server.shutdown()
        broker.stop()
    assert code == 0, run.stderr()


def test_a_reload_while_the_first_model_loads_is_made_after_and_does_not_end_the_run(photo_onnx, video):
    """`systemctl reload` (SIGHUP) while the first model loads (a TensorRT build takes minutes) used to kill the
    process: SIGHUP's default action. It is held, and made once the loop runs."""
    script = (
        "import os, signal, sys\n"
        "from edge import cli\n"
        "from edge.model.classify import Classifier\n"
        "real, sent = Classifier.open, []\n"
        "def loading(*args, **kwargs):\n"
        "    if not sent:\n"
        "        sent.append(os.kill(os.getpid(), signal.SIGHUP))\n"
        "    return real(*args, **kwargs)\n"
        "Classifier.open = staticmethod(loading)\n"
        "sys.exit(cli.main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "--model", str(photo_onnx), "--source", str(video),
                           "--loop", "--max-frames", "60", "--stats-interval", "0"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    assert "a reload was asked for while the model loaded" in done.stderr and "Traceback" not in done.stderr
