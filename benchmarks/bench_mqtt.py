"""What --mqtt and --metrics-port cost the camera loop, against the loop without them, in one run.

    python benchmarks/bench_mqtt.py [--frames 300] [--rounds 3] [--arch mobilenet_v2]

Needs the ``mosquitto`` binary (started here on a free loopback port), paho-mqtt and prometheus_client.
The loop (``edge.pipeline.run``, the code behind ``edge-classify --source``) runs over a 640x480
MJPG video with human output, rounds alternating between:

- the loop as it was before issue 15 (no MQTT, no metrics): the baseline;
- ``--metrics-port`` (histograms per frame; the endpoint is scraped once a round);
- ``--mqtt ... --mqtt-every frame`` with the broker up: a message per frame, QoS 1;
- the same with the broker down: every message goes to the on-disk spool;
- ``--mqtt-every frame`` and ``--metrics-port`` together.

It prints the loop's FPS and its output-stage milliseconds (medians over rounds; publishing and the
metrics are timed inside that stage), the cost of one ``Telemetry.send`` call alone (building
the JSON payload and writing it to the sqlite spool, plus the histograms), and how fast a backlog goes into the spool
while the broker is down and out of it once the broker is back. Weights are random: speed does not
depend on them.
"""

import argparse
import contextlib
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_image import random_artifact  # noqa: E402
from bench_loop import FPS, make_video  # noqa: E402


def decode_all(video: Path) -> list:
    """Every frame of the video, decoded once (the per-call cost below leaves decoding out)."""
    import cv2

    capture = cv2.VideoCapture(str(video))
    frames = []
    ok, frame = capture.read()
    while ok:
        frames.append(frame)
        ok, frame = capture.read()
    capture.release()
    return frames


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(folder: Path, port: int = 0) -> "tuple[subprocess.Popen, int]":
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = port or free_port()
    config = folder / f"mosquitto-{port}.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {os.environ.get('USER', 'root')}\n")
    process = subprocess.Popen([mosquitto, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def run_loop(classifier, video: Path, flags: List[str]) -> Dict[str, float]:
    """The real loop over the whole file with these edge-classify flags; FPS and the output stage's median ms."""
    from edge.cli import build_parser, plan_concurrency, run_stream
    from edge.pipeline import StageTimes
    from edge.settings import settings_from_args

    settings = settings_from_args(build_parser().parse_args(["--source", str(video), "--stats-interval", "0", "-q",
                                                             *flags]))
    times = StageTimes()
    with contextlib.redirect_stdout(io.StringIO()):
        run_stream(settings, classifier, plan_concurrency(settings, [], gpu=False), threading.Event(), times)
    return {"fps": times.fps(), "output": statistics.median(times.history["output"]), "frames": times.frames}


def frame_call_cost(classifier, frames, broker_port: int, spool: Path) -> Dict[str, float]:
    """Median microseconds of one Telemetry.send call (what the loop thread pays per frame)."""
    from edge.cli import build_parser
    from edge.sinks.telemetry import TelemetryOptions, Telemetry
    from edge.pipeline import frame_record

    results = {}
    for name, flags in (("metrics", ["--metrics-port", "0"]),
                        ("mqtt", ["--mqtt", f"mqtt://127.0.0.1:{broker_port}/bench", "--mqtt-every", "frame",
                                  "--mqtt-spool", str(spool / "cost")]),
                        ("mqtt + metrics", ["--mqtt", f"mqtt://127.0.0.1:{broker_port}/bench", "--mqtt-every",
                                            "frame", "--mqtt-spool", str(spool / "cost"), "--metrics-port", "0"])):
        args = build_parser().parse_args(["--source", "x.avi", *flags])
        telemetry = Telemetry.open(TelemetryOptions.from_args(args), ["x.avi"], classifier)
        costs = []
        try:
            for number, frame in enumerate(frames):
                prediction = classifier.classify(frame)
                stages = dict(prediction.ms, output=0.1)
                started = time.perf_counter()
                telemetry.send(frame_record("x.avi", number, prediction, 20.0, 0), prediction, stages, 20.0, 30.0,
                               "x.avi")
                costs.append((time.perf_counter() - started) * 1e6)
        finally:
            telemetry.close()
        results[name] = statistics.median(costs)
    return results


def drain_rate(folder: Path, count: int = 5000) -> Dict[str, float]:
    """A backlog of ``count`` messages spooled while the broker is down, then sent when it is up: messages per
    second into the spool, and out of it after the broker is back."""
    from edge.sinks.mqtt import Credentials, Publisher, parse_url
    from edge.sinks.spool import Spool

    payload = ('{"source":"csi://0","frame":0,"time":1764253001.532,"label":"tabby","index":281,"score":0.83,'
               '"topk":[{"label":"tabby","index":281,"score":0.83}],"age_ms":38.5,"dropped":0}')
    port = free_port()  # nothing listens yet
    publisher = Publisher(parse_url(f"mqtt://127.0.0.1:{port}/bench"), Credentials(), "drain",
                          Spool(folder / "drain", 512 << 20))
    publisher.start(wait_s=1.0)
    started = time.perf_counter()
    for _ in range(count):
        publisher.submit("bench/drain/label", payload)
    while publisher.stats.queued < count:
        time.sleep(0.001)
    spooled = time.perf_counter() - started
    broker, _ = start_broker(folder, port)
    try:
        up = time.perf_counter()
        while publisher.stats.connects == 0 and time.perf_counter() - up < 60:  # the backoff's next try
            time.sleep(0.001)
        started = time.perf_counter()
        while publisher.stats.sent < count and time.perf_counter() - started < 120:
            time.sleep(0.002)
        sent = time.perf_counter() - started
        publisher.close()
    finally:
        broker.terminate()
        broker.wait(10)
    return {"count": count, "spool_rate": count / spooled, "send_rate": publisher.stats.sent / sent,
            "sent": publisher.stats.sent, "reconnect_s": started - up}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arch", default="mobilenet_v2")
    args = parser.parse_args()

    import cv2

    from edge.model.classify import Classifier

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = make_video(folder, args.frames)
        artifact = random_artifact(folder / f"{args.arch}.onnx", args.arch)
        broker, port = start_broker(folder)
        down = free_port()
        try:
            classifier = Classifier.open(artifact, device="cpu")
            configs = {
                "the loop before issue 15 (no MQTT, no metrics)": [],
                "--metrics-port": ["--metrics-port", "0"],
                "--mqtt, every frame, broker up": ["--mqtt", f"mqtt://127.0.0.1:{port}/bench", "--mqtt-every",
                                                   "frame", "--mqtt-spool", str(folder / "up")],
                "--mqtt, every frame, broker down (spooling)": ["--mqtt", f"mqtt://127.0.0.1:{down}/bench",
                                                                "--mqtt-every", "frame", "--mqtt-spool",
                                                                str(folder / "down"), "--mqtt-spool-max", "512"],
                "--mqtt every frame + --metrics-port": ["--mqtt", f"mqtt://127.0.0.1:{port}/bench", "--mqtt-every",
                                                        "frame", "--mqtt-spool", str(folder / "up"),
                                                        "--metrics-port", "0"],
            }
            results: Dict[str, List[Dict[str, float]]] = {name: [] for name in configs}
            run_loop(classifier, video, [])  # warm-up: model, decoder, page cache
            for _ in range(args.rounds):
                for name, flags in configs.items():
                    results[name].append(run_loop(classifier, video, flags))
            cost = frame_call_cost(classifier, decode_all(video), port, folder)
            drain = drain_rate(folder)
        finally:
            broker.terminate()
            broker.wait(10)

    import paho.mqtt
    import prometheus_client  # noqa: F401

    base = statistics.median(r["fps"] for r in results[next(iter(configs))])
    print(f"{args.arch} FP32 ONNX, CPU ({os.cpu_count()} cores), a {args.frames}-frame 640x480 MJPG video, "
          f"{args.rounds} alternating rounds (medians), OpenCV {cv2.__version__}, paho-mqtt {paho.mqtt.__version__}, "
          f"Python {sys.version.split()[0]}")
    print()
    print("| loop | FPS | vs before | output stage ms |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        fps = statistics.median(r["fps"] for r in runs)
        output = statistics.median(r["output"] for r in runs)
        print(f"| {name} | {fps:.1f} | {fps / base:.0%} | {output:.3f} |")
    print()
    print("| one Telemetry.send call (the loop thread's cost per frame) | median µs |")
    print("|---|---:|")
    for name, value in cost.items():
        print(f"| {name} | {value:.1f} |")
    print()
    print(f"| backlog of {drain['count']} messages (broker down, then up) | messages/s |")
    print("|---|---:|")
    print(f"| into the spool (broker down) | {drain['spool_rate']:.0f} |")
    print(f"| out of the spool once reconnected ({drain['sent']:.0f} sent; the backoff's next try came "
          f"{drain['reconnect_s']:.1f} s after the broker was back) | {drain['send_rate']:.0f} |")


if __name__ == "__main__":
    main()
