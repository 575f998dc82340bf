"""onnxruntime's CPU thread pool: its defaults against ``--threads N`` (no spinning), on this host as it is.

    python benchmarks/bench_threads.py [--runs 200] [--rounds 3]

mobilenet_v2 FP32 ONNX (random weights), the CPU provider, through edge's backend exactly as
edge-classify opens it. Each setting runs in its own process, the settings alternating over
``--rounds`` rounds (the machine's load moves); per setting: the median ms per inference and the
process's CPU time per inference (all threads, spinning included). The load average is printed:
the defaults win on an idle host, a small pool without spinning on a busy one.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = (None, 1, 2)  # None: onnxruntime's defaults (a thread per core, spinning)


def measure(artifact: Path, threads: Optional[int], runs: int) -> Dict[str, float]:
    from edge.model.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(artifact, device="cpu", threads=threads)
    batch = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    for _ in range(10):
        backend.run(batch)
    samples = []
    cpu_started = time.process_time()
    for _ in range(runs):
        started = time.perf_counter()
        backend.run(batch)
        samples.append((time.perf_counter() - started) * 1e3)
    cpu_ms = (time.process_time() - cpu_started) * 1e3 / runs
    return {"ms": statistics.median(samples), "cpu_ms": cpu_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.threads, args.runs)))
        return

    import torch

    from export.exporter import export_artifact
    from export.zoo import build_model

    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    results: Dict[Optional[int], List[Dict[str, float]]] = {s: [] for s in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        artifact = export_artifact(build_model("mobilenet_v2").eval(), Path(tmp) / "mobilenet_v2.onnx",
                                   arch="mobilenet_v2", labels=[f"class {i}" for i in range(1000)], precision="fp32")
        for _ in range(args.rounds):
            for setting in SETTINGS:
                command = [sys.executable, __file__, "--measure", str(artifact), "--runs", str(args.runs)]
                command += ["--threads", str(setting)] if setting else []
                out = subprocess.run(command, stdout=subprocess.PIPE, universal_newlines=True, check=True, cwd=REPO)
                results[setting].append(json.loads(out.stdout))
    print(f"mobilenet_v2 FP32 ONNX on onnxruntime's CPU provider, {os.cpu_count()} cores, load average "
          f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after; medians of {args.rounds} alternating "
          f"rounds of {args.runs} inferences")
    print()
    print("| setting | ms per inference | CPU ms per inference (all threads) |")
    print("|---|---:|---:|")
    for setting, runs in results.items():
        name = "defaults (a thread per core, spinning)" if setting is None else f"--threads {setting} (no spinning)"
        print(f"| {name} | {statistics.median(r['ms'] for r in runs):.2f} | "
              f"{statistics.median(r['cpu_ms'] for r in runs):.2f} |")


if __name__ == "__main__":
    main()
