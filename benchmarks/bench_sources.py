"""Several sources in one edge-classify process against one process per source, and the seed pipeline.

    python benchmarks/bench_sources.py [--counts 1 2 4 8] [--seconds 10] [--fps 30] [--device cpu|cuda]

For 1, 2, 4 and 8 sources, each of two kinds:

- **files**: the same 640x480 MJPG video per source, replayed (``--loop``): every frame is classified, so
  the aggregate rate is as fast as the machine goes;
- **cameras**: synthetic live cameras at a fixed FPS, multipart MJPEG over HTTP on loopback (what an IP
  camera's ``http://.../video.mjpg`` is), served by a process of their own (its CPU is not counted); a live
  source keeps only its newest frame, so a slow loop drops frames and the frame age shows it;

run as ``edge-classify --sources FILE`` (one process, one batch per step) and as N ``edge-classify
--source URI`` processes side by side (each with the runtime's default threads, as a user would start
them). Measured over ``--seconds`` after every source's first frame: aggregate frames classified per second,
each source's share (starved: a source under 80% of the best one's), CPU ms per frame (user + system of
the edge-classify processes), frame age p50/p95 per source (the worst source's), and peak memory (the sum
of the processes' peak RSS). The seed pipeline (PIL + torchvision + eager torch) on one source is the
reference row. mobilenet_v2 FP32 ONNX with random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WARM_UP_LIMIT_S = 60.0


def serve_cameras(video: Path, fps: float, port: int) -> None:
    """Every GET is a live camera: the video's frames as multipart MJPEG at ``fps``, looping, until it hangs up."""
    import cv2
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    capture, frames = cv2.VideoCapture(str(video)), []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())

    class Camera(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            due, index = time.monotonic(), 0
            try:
                while True:
                    jpeg = frames[index % len(frames)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                     % (len(jpeg), jpeg))
                    index += 1
                    due += 1.0 / fps
                    time.sleep(max(0.0, due - time.monotonic()))
            except OSError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Camera)
    server.daemon_threads = True
    print("serving", flush=True)
    server.serve_forever()


class Process:
    """One edge-classify, its JSON lines timed as they arrive, its CPU time and peak memory read from /proc."""

    def __init__(self, argv: Sequence[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.popen = subprocess.Popen([sys.executable, "-m", "edge.cli", *argv, "--json", "-q"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env,
                                      cwd=str(REPO))  # -m puts the working directory first: another checkout's edge/
        self.lines: List[Tuple[float, str, float]] = []  # (arrival, source, age_ms)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            record = json.loads(line)
            self.lines.append((time.monotonic(), record["source"], record["age_ms"]))

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> str:
        """SIGTERM, then its stderr (stdout stays the reader thread's until the end)."""
        self.popen.send_signal(signal.SIGTERM)
        self.popen.wait(30)
        self.reader.join(10)
        return self.popen.stderr.read()


def measure(commands: List[List[str]], names: List[str], seconds: float) -> Dict[str, object]:
    """Run ``commands`` side by side; from every source's first frame, count ``seconds`` of frames."""
    processes = [Process(argv) for argv in commands]
    try:
        deadline = time.monotonic() + WARM_UP_LIMIT_S
        while {source for p in processes for _, source, _ in list(p.lines)} < set(names):
            if time.monotonic() > deadline or any(p.popen.poll() is not None for p in processes):
                raise RuntimeError("not every source gave a frame: " + " | ".join(p.stop()[-300:] for p in processes))
            time.sleep(0.05)
        time.sleep(1.0)  # past the first frames' start-up
        started, cpu_before = time.monotonic(), sum(p.cpu_s() for p in processes)
        time.sleep(seconds)
        ended, cpu = time.monotonic(), sum(p.cpu_s() for p in processes) - cpu_before
        peak = sum(p.peak_rss_mb() for p in processes)
    finally:
        for p in processes:
            if p.popen.poll() is None:
                p.stop()
    window = [(source, age) for p in processes for at, source, age in p.lines if started <= at < ended]
    per_source = {name: [age for source, age in window if source == name] for name in names}
    counts = [len(ages) for ages in per_source.values()]
    frames = sum(counts)
    return {"fps": frames / (ended - started), "per_source": [c / (ended - started) for c in counts],
            "fairness": min(counts) / max(max(counts), 1), "cpu_ms": 1e3 * cpu / max(frames, 1),
            "age_p50": max(float(np.percentile(a, 50)) for a in per_source.values() if a),
            "age_p95": max(float(np.percentile(a, 95)) for a in per_source.values() if a),
            "peak_mb": peak}


def configurations(kind: str, count: int, model: Path, video: Path, port: int, folder: Path,
                   extra: Sequence[str]) -> Tuple[List[List[str]], List[List[str]], List[str], List[str]]:
    """(one process's command, one command per source, the names the one process prints, the separate ones')."""
    if kind == "files":  # a file per source (links to one video), so each process's records name its own
        uris = [str(_link(video, folder / f"{video.stem}-{i}{video.suffix}")) for i in range(count)]
    else:
        uris = [f"http://127.0.0.1:{port}/cam{i}.mjpg" for i in range(count)]
    loop = ["--loop"] if kind == "files" else []
    names = [f"s{i}" for i in range(count)]
    listed = folder / f"{kind}-{count}.txt"
    listed.write_text("".join(f"{name}={uri}\n" for name, uri in zip(names, uris)))
    separate = [["--model", str(model), "--source", uri, *loop, *extra] for uri in uris]
    if count == 1:  # one source: the same run either way
        return separate, separate, uris, uris
    one = [["--model", str(model), "--sources", str(listed), "--max-batch", str(count), *loop, *extra]]
    return one, separate, names, uris


def _link(target: Path, link: Path) -> Path:
    if not link.exists():
        os.link(str(target), str(link))
    return link


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--kinds", nargs="+", choices=("files", "cameras"), default=["files", "cameras"])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured per configuration (default 10)")
    parser.add_argument("--fps", type=float, default=30.0, help="each synthetic camera's rate (default 30)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--serve-cameras", type=int, help=argparse.SUPPRESS)  # the camera process
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_cameras:
        serve_cameras(args.video, args.fps, args.serve_cameras)
        return

    from bench_image import random_artifact
    from bench_loop import in_subprocess, make_video
    from mqtt_broker import free_port  # tests/ is on the path through bench_loop

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        video = make_video(folder, 150)
        model = random_artifact(folder / "mobilenet_v2.onnx", "mobilenet_v2")
        seed = in_subprocess("seed", model, video)
        port = free_port()
        cameras = subprocess.Popen([sys.executable, __file__, "--serve-cameras", str(port), "--video", str(video),
                                    "--fps", str(args.fps)], stdout=subprocess.PIPE, universal_newlines=True)
        cameras.stdout.readline()
        extra = ["--device", args.device]
        try:
            for kind in args.kinds:
                for count in args.counts:
                    one, separate, one_names, separate_names = configurations(kind, count, model, video, port,
                                                                             folder, extra)
                    together = measure(one, one_names, args.seconds)
                    apart = measure(separate, separate_names, args.seconds)
                    rows.append((kind, count, together, apart))
                    print(f"{kind} x{count}: one process {together['fps']:.1f} fps, {count} processes "
                          f"{apart['fps']:.1f} fps", file=sys.stderr, flush=True)
        finally:
            cameras.terminate()
    print_table(rows, seed, args)


def print_table(rows: List[tuple], seed: Dict[str, float], args: argparse.Namespace) -> None:
    import cv2
    import onnxruntime

    print(f"mobilenet_v2 FP32 ONNX on {args.device}, {os.cpu_count()} CPU cores (load average "
          f"{os.getloadavg()[0]:.1f}), 640x480 MJPG sources, cameras at {args.fps:g} FPS each, "
          f"{args.seconds:g} s measured per row; onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}")
    print()
    print(f"Seed pipeline (cv2 read, PIL, torchvision, eager torch), one video file, one process: "
          f"{seed['fps']:.1f} FPS")
    print()
    print("| sources | kind | processes | FPS, all sources | per source, min / max | CPU ms per frame | "
          "frame age p50 / p95 ms (worst source) | peak memory MB (sum) |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for kind, count, together, apart in rows:
        for label, run in (("1", together), (str(count), apart)):
            shares = run["per_source"]
            print(f"| {count} | {kind} | {label} | {run['fps']:.1f} | {min(shares):.1f} / {max(shares):.1f} | "
                  f"{run['cpu_ms']:.1f} | {run['age_p50']:.0f} / {run['age_p95']:.0f} | {run['peak_mb']:.0f} |")
    print()
    print("| sources | kind | FPS one process / separate | memory one process / separate | age p95 one / separate | "
          "fairness (least / most frames, one process) |")
    print("|---:|---|---:|---:|---:|---:|")
    for kind, count, together, apart in rows:
        if count > 1:
            print(f"| {count} | {kind} | {together['fps'] / apart['fps']:.2f} | "
                  f"{together['peak_mb'] / apart['peak_mb']:.2f} | {together['age_p95']:.0f} / {apart['age_p95']:.0f} "
                  f"| {together['fairness']:.2f} |")


if __name__ == "__main__":
    main()
