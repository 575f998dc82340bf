"""What ``--serve`` (the live view) costs the camera loop, and how late its picture reaches a viewer.

    python benchmarks/bench_serve.py [--frames 300] [--rounds 3] [--arch mobilenet_v2] [--serve-fps 5]

The loop (``edge.pipeline.classify_frames``, the code behind ``edge-classify --source``) runs over a 640x480
MJPG video, rounds alternating between: without ``--serve``; with it and nobody watching; with 1 viewer; with
10 viewers. Viewers are threads of another process (as a browser would be) that read ``/stream.mjpg`` and
note, for each picture, its arrival time minus the capture time stamped in its part (``X-Captured``): the
glass-to-browser delay, short of the browser's own decode and paint. Printed: the loop's FPS, the CPU
milliseconds per frame of the whole process (model, loop, encoder and server threads: what the device
pays), the JPEGs encoded and pictures received, and the delay's median and p95 (medians over rounds).
Weights are random: speed does not depend on them.
"""

import argparse
import contextlib
import io
import json
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------- viewers

def view(port: int, delays: List[float]) -> None:
    """One viewer: read /stream.mjpg until the server closes it; each picture's arrival minus its capture time."""
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            break
        except OSError:
            time.sleep(0.05)
    sock.sendall(b"GET /stream.mjpg HTTP/1.0\r\nHost: localhost\r\n\r\n")
    stream = sock.makefile("rb")
    while stream.readline() not in (b"\r\n", b""):  # the response's headers
        pass
    try:
        while True:
            line = stream.readline()
            if not line:
                return
            if line.strip() != b"--frame":
                continue
            headers = {}
            while True:
                line = stream.readline()
                if line in (b"\r\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            stream.read(int(headers["content-length"]))
            delays.append((time.time() - float(headers["x-captured"])) * 1e3)
    except (OSError, KeyError, ValueError):
        return


def viewers_main(port: int, count: int) -> None:
    """``--viewers PORT N``: N viewers until the server closes; then their delays as one JSON line."""
    delays: List[List[float]] = [[] for _ in range(count)]
    threads = [threading.Thread(target=view, args=(port, d), daemon=True) for d in delays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(delays))


# ---------------------------------------------------------------------------------------------- the loop

def run_loop(classifier, video: Path, serve: bool, viewers: int, serve_fps: float) -> Dict[str, float]:
    """The real loop over the whole file; FPS, CPU ms per frame, encodes and the viewers' delays."""
    from edge import pipeline
    from edge.sinks.console import ConsoleSink
    from edge.sinks.web import LiveView, ServeOptions
    from edge.settings import Settings
    from edge.sources.capture import Grabber, open_capture, parse_source

    port = free_port()
    settings = Settings(model=Path("m.onnx"), source=str(video), stats_interval=0, quiet=True,
                        serve=f"127.0.0.1:{port}" if serve else None, serve_fps=serve_fps)
    spec = parse_source(source=str(video))
    grabber = Grabber(spec, open_capture)
    live = LiveView.open(ServeOptions.from_args(settings), [spec.name], classifier) if serve else None
    client = None

    def open_sinks() -> List:
        nonlocal client
        if live is None:
            return [ConsoleSink(False, 1, every_result=False)]
        live.watch(spec.name, grabber)
        if viewers:  # the viewers connect before the first frame, so every frame is offered to them
            client = subprocess.Popen([sys.executable, __file__, "--viewers", str(port), str(viewers)],
                                      stdout=subprocess.PIPE, universal_newlines=True)
            while live.viewers < viewers:
                time.sleep(0.01)
        return [ConsoleSink(False, 1, every_result=False), live]

    times = pipeline.StageTimes()
    cpu = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        pipeline.run(settings, classifier, grabber, open_sinks, times=times)
    cpu = time.process_time() - cpu
    encodes = live.encodes if live is not None else 0
    encode_s = live.encode_s if live is not None else 0.0
    delays: List[float] = []
    received = 0
    if client is not None:
        per_viewer = json.loads(client.communicate(timeout=60)[0])
        received = sum(len(d) for d in per_viewer)
        delays = [x for d in per_viewer for x in d]
    return {"fps": times.fps(), "cpu_ms": cpu * 1e3 / max(times.frames, 1), "frames": times.frames,
            "output_ms": statistics.median(times.history["output"]), "encodes": encodes, "received": received,
            "encode_ms": encode_s * 1e3 / encodes if encodes else float("nan"),
            "delay_p50": statistics.median(delays) if delays else float("nan"),
            "delay_p95": sorted(delays)[int(0.95 * (len(delays) - 1))] if delays else float("nan")}


def frame_call_cost(classifier, video: Path) -> float:
    """Median microseconds of one LiveView.frame call, nobody watching (what the loop thread pays per frame)."""
    import cv2

    from edge.pipeline import frame_record
    from edge.sinks.httpd import Address
    from edge.sinks.web import LiveView, ServeOptions

    capture = cv2.VideoCapture(str(video))
    ok, image = capture.read()
    capture.release()
    prediction = classifier.classify(image)
    live = LiveView.open(ServeOptions(Address("127.0.0.1", 0), model=str(video)), ["bench.avi"], classifier)
    costs = []
    try:
        for number in range(2000):
            record = frame_record("bench.avi", number, prediction, 20.0, 0)
            started = time.perf_counter()
            live.frame("bench.avi", image, record, prediction, prediction.ms, 20.0, 30.0)
            costs.append((time.perf_counter() - started) * 1e6)
    finally:
        live.close()
    return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--serve-fps", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime's CPU threads (default 1: it then does not spin, so CPU ms per frame is work "
                             "done, as on a Jetson whose GPU runs the model; 0: onnxruntime's own spinning pool)")
    parser.add_argument("--viewers", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.viewers:
        viewers_main(*args.viewers)
        return

    from bench_image import random_artifact
    from bench_loop import make_video
    from edge.model.classify import Classifier

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = make_video(folder, args.frames)
        artifact = random_artifact(folder / f"{args.arch}.onnx", args.arch)
        classifier = Classifier.open(artifact, device="cpu", threads=args.threads or None)
        configs = {"without --serve": (False, 0), "--serve, nobody watching": (True, 0),
                   "--serve, 1 viewer": (True, 1), "--serve, 10 viewers": (True, 10)}
        results: Dict[str, List[Dict[str, float]]] = {name: [] for name in configs}
        run_loop(classifier, video, False, 0, args.serve_fps)  # warm-up: model, decoder, page cache
        call_us = frame_call_cost(classifier, video)
        for _ in range(args.rounds):
            for name, (serve, viewers) in configs.items():
                results[name].append(run_loop(classifier, video, serve, viewers, args.serve_fps))
    base = statistics.median(r["fps"] for r in results["without --serve"])
    print(f"\n{args.arch} FP32 on {classifier.backend.provider} ({args.threads or 'default'} threads), {args.frames} "
          f"frames 640x480 MJPG, --serve-fps {args.serve_fps:g}, {args.rounds} alternating rounds, medians\n")
    print("| loop | FPS | vs without | CPU ms/frame | output stage ms | JPEGs encoded | ms per JPEG | "
          "pictures received | delay p50 ms | delay p95 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, rows in results.items():
        med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        delay = (f"{med['delay_p50']:.0f} | {med['delay_p95']:.0f}" if med["received"] else "- | -")
        jpeg = f"{med['encode_ms']:.1f}" if med["encodes"] else "-"
        print(f"| {name} | {med['fps']:.1f} | {med['fps'] / base:.0%} | {med['cpu_ms']:.1f} | {med['output_ms']:.3f} | "
              f"{med['encodes']:.0f} | {jpeg} | {med['received']:.0f} | {delay} |")
    print(f"\nOne LiveView.frame call, nobody watching (the loop thread's whole cost per frame, with the metrics "
          f"it feeds): {call_us:.1f} us (median of 2000)")


if __name__ == "__main__":
    main()
