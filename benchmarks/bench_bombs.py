"""Decompression bombs: peak memory and time of edge-classify against the seed's plain OpenCV decode.

    python benchmarks/bench_bombs.py [--seed-timeout 60] [--seed-memory-gb 6]

Each bomb is a small file whose header claims a huge image, or whose decoding costs far more than its size
(a progressive JPEG of thousands of scans). The seed pipeline decoded whatever the
header said (``cv2.imdecode`` / ``cv2.imread``); ``edge-classify --image`` reads the size from the
header and refuses before decoding. Both run in their own process under ``/usr/bin/time -v`` (peak
RSS), the seed capped at ``--seed-timeout`` seconds and ``--seed-memory-gb`` of address space so
that the benchmark itself cannot take the machine down. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

import cv2

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, side: int) -> Path:
    """A real, complete PNG of ``side`` x ``side`` grey RGB pixels (a few MB: zeros compress 1000:1)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * (3 * side)
    parts = []
    rows_per_block = max(1, (64 << 20) // len(row))
    for start in range(0, side, rows_per_block):
        parts.append(compressor.compress(row * min(rows_per_block, side - start)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts))
                     + png_chunk(b"IEND", b""))
    return path


def png_header_only(path: Path, side: int) -> Path:
    """A PNG whose IHDR claims ``side`` x ``side`` with a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + png_chunk(b"IEND", b""))
    return path


def jpeg_claiming(path: Path, side: int) -> Path:
    """A real photo's JPEG with its frame header rewritten to claim ``side`` x ``side`` (tens of KB)."""
    from skimage import data

    encoded = bytearray(cv2.imencode(".jpg", data.chelsea()[..., ::-1])[1].tobytes())
    at = encoded.index(b"\xff\xc0")
    encoded[at + 5:at + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(encoded))
    return path


def jpeg_real(path: Path, side: int) -> Path:
    """A real ``side`` x ``side`` JPEG (a photo scaled up)."""
    from skimage import data

    big = cv2.resize(data.astronaut()[..., ::-1], (side, side), interpolation=cv2.INTER_LINEAR)
    cv2.imwrite(str(path), big, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return path


def jpeg_many_scans(path: Path, side: int, scans: int) -> Path:
    """A flat ``side`` x ``side`` progressive JPEG whose last (tiny) scan is repeated up to ``scans``:
    libjpeg decodes every scan, a pass over the whole picture each, so the time grows with scans x pixels."""
    import numpy as np

    progressive = cv2.imencode(".jpg", np.full((side, side, 3), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    data = progressive.tobytes()
    last, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    path.write_bytes(data[:end] + data[last:end] * (scans - 10) + data[end:])
    return path


def measured(command: List[str], timeout: float) -> Tuple[str, float, float]:
    """(outcome, seconds, peak RSS MB) of ``command`` under /usr/bin/time -v."""
    started = time.perf_counter()
    try:
        result = subprocess.run(["/usr/bin/time", "-v", *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"killed after {timeout:.0f} s", time.perf_counter() - started, float("nan")
    seconds = time.perf_counter() - started
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.startswith(("edge-classify", "seed"))]
    if result.returncode and "signal 14" in result.stderr:
        lines = [f"stopped by its {seconds:.0f} s alarm, still decoding"]
    outcome = (lines[0] if lines else result.stdout.strip().splitlines()[0] if result.stdout.strip()
               else f"exit {result.returncode}")
    return outcome, seconds, int(peak.group(1)) / 1024 if peak else float("nan")


def header_ms(path: Path, rounds: int = 20) -> float:
    """Median milliseconds to read the file and check its header (what runs before any decode)."""
    from edge.sources.imagecheck import DEFAULT_MAX_PIXELS, ImageError, check_header, inspect_header, read_file_bytes

    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        try:
            check_header(inspect_header(read_file_bytes(path, 1 << 30)), DEFAULT_MAX_PIXELS)
        except ImageError:
            pass
        times.append((time.perf_counter() - started) * 1e3)
    return sorted(times)[len(times) // 2]


SEED = ("import resource, signal, sys, cv2\n"
        "limit = int(sys.argv[2])\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "signal.alarm(int(sys.argv[3]))  # ends the decode; /usr/bin/time still reports its peak\n"
        "try:\n"
        "    image = cv2.imread(sys.argv[1])\n"
        "    print('seed: decoded', None if image is None else image.shape, file=sys.stderr)\n"
        "except (cv2.error, MemoryError) as exc:\n"
        "    print('seed: error', str(exc).strip().splitlines()[-1][-60:], file=sys.stderr)\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed-timeout", type=float, default=60.0)
    parser.add_argument("--seed-memory-gb", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = folder / "m.onnx"
        from export.exporter import export_artifact
        from export.zoo import build_model

        export_artifact(build_model("mobilenet_v2", 1000).eval(), model, arch="mobilenet_v2",
                        labels=[f"class {i}" for i in range(1000)])
        bombs: Dict[str, Path] = {
            "PNG 32000x32000, real data": png_bomb(folder / "png32000.png", 32000),
            "PNG header 50000x50000": png_header_only(folder / "png50000.png", 50000),
            "JPEG header 25000x25000": jpeg_claiming(folder / "jpeg25000.jpg", 25000),
            "JPEG 12000x12000, real": jpeg_real(folder / "jpeg12000.jpg", 12000),
            "progressive JPEG 1024x1024, 16000 scans": jpeg_many_scans(folder / "scans.jpg", 1024, 16000),
            "(not a bomb: JPEG 640x640, for the baseline)": jpeg_real(folder / "jpeg640.jpg", 640),
        }
        limit = str(int(args.seed_memory_gb * (1 << 30)))
        print(f"{cv2.__version__=}, seed capped at {args.seed_timeout:.0f} s and {args.seed_memory_gb:g} GB\n")
        print("| bomb | file | seed: outcome | seed s | seed peak MB | edge-classify: outcome | process s | "
              "peak MB | header check ms |")
        print("|---|---:|---|---:|---:|---|---:|---:|---:|")
        for name, path in bombs.items():
            seed = measured([sys.executable, "-c", SEED, str(path), limit, str(int(args.seed_timeout))],
                            args.seed_timeout + 30)
            ours = measured([sys.executable, "-m", "edge.cli", "--model", str(model), "--image", str(path)], 120)
            size = path.stat().st_size
            print(f"| {name} | {size / 1e6:.2f} MB | {seed[0][:60]} | {seed[1]:.1f} | {seed[2]:.0f} | "
                  f"{ours[0].split(': ', 2)[-1][:70]} | {ours[1]:.2f} | {ours[2]:.0f} | {header_ms(path):.3f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
