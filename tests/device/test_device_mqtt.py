"""edge-classify --mqtt and --metrics-port as installed on a device, against a real Mosquitto.

The bundle's photo model on its clip, replayed with --loop (a camera's pace on a CPU), the installed
console script in a process of its own: one message per frame, the metrics scraped and parsed, and
nothing missing when the broker is stopped mid-run and started again. Skipped, saying why, without
the ``mosquitto`` binary or the extras (``pip install '.[mqtt,metrics]' in the edge-classifier checkout``).
"""

import json
import signal
import subprocess
from typing import List

import pytest
from mqtt_broker import MOSQUITTO, Broker, Subscriber, free_port, scrape

from .conftest import command

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed (pip install '.[mqtt]' in the edge-classifier checkout)")
pytest.importorskip("prometheus_client", reason="prometheus_client is not installed "
                                                "(pip install '.[metrics]' in the edge-classifier checkout)")
if MOSQUITTO is None:
    pytest.skip("mosquitto is not installed (apt-get install mosquitto)", allow_module_level=True)


@pytest.fixture
def broker(tmp_path):
    folder = tmp_path / "broker"
    folder.mkdir()
    started = Broker(folder)
    started.start()
    yield started
    started.stop()


def start_classify(bundle, broker: Broker, metrics_port: int, spool) -> subprocess.Popen:
    """The issue's command on the bundle's clip (replayed), --json too so the test knows every frame."""
    argv = ["--model", bundle.models["fp32_uint8"], "--source", bundle.clip, "--loop", "--json",
            "--mqtt", f"mqtt://127.0.0.1:{broker.port}/edge", "--mqtt-every", "frame", "--mqtt-spool", spool,
            "--metrics-port", metrics_port]
    return subprocess.Popen(command("edge-classify") + [str(a) for a in argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def stop(process: subprocess.Popen) -> List[dict]:
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.slow
def test_every_frame_arrives_through_a_broker_restart_and_the_metrics_parse(bundle, broker, tmp_path):
    subscriber = Subscriber(broker.port, "edge")
    metrics_port = free_port()
    process = start_classify(bundle, broker, metrics_port, tmp_path / "spool")
    try:
        assert subscriber.wait_for(lambda: len(subscriber.labels()) >= 10, 60), "no messages before the outage"
        running = scrape(metrics_port)
        broker.stop()
        assert subscriber.wait_for(lambda: scrape(metrics_port)["edge_classify_mqtt_queued"] >= 10, 60), \
            "the spool did not fill while the broker was away"
        broker.start()
        assert subscriber.wait_for(lambda: scrape(metrics_port)["edge_classify_mqtt_connects_total"] == 2, 60)
        arrived = len(subscriber.labels())
        assert subscriber.wait_for(lambda: len(subscriber.labels()) >= arrived + 10, 60)
    finally:
        printed = stop(process)
    assert [p["frame"] for p in printed] == list(range(len(printed)))
    subscriber.wait_for(lambda: {m["frame"] for m in subscriber.labels()} >= {p["frame"] for p in printed}, 30)
    subscriber.close()
    received = subscriber.labels()
    first = {}
    for message in received:
        first.setdefault(message["frame"], message)
    assert sorted(first) == [p["frame"] for p in printed]  # none missing
    assert list(first) == sorted(first)  # in order
    assert [first[p["frame"]] for p in printed] == printed  # the --json object, unchanged
    frames = running[f"edge_classify_frames_total{{source={bundle.clip}}}"]  # each series has its source
    assert frames >= 10 and running["edge_classify_mqtt_connected"] == 1
    assert running[f"edge_classify_stage_seconds_count{{source={bundle.clip},stage=infer}}"] == frames
