"""Cost and parity by input resolution: the seed pipeline, a plain INTER_LINEAR script and edge-classify.

    python benchmarks/bench_resolution.py [--rounds 10] [--seed-rounds 3] [--repeats 2]
    python benchmarks/bench_resolution.py --format ts --device cuda     # where torch sees a GPU

For 640x480, 1280x720, 1920x1080 and 3840x2160, six scikit-image photos scaled to fill the frame,
as JPEG files (decode included) and as raw BGR frames in memory (a camera's frames), each stage
timed (median ms per image over ``--rounds`` passes; each pipeline in its own process, alternating,
the best of ``--repeats`` runs kept, since the machine is shared; plain and ours share one process and
one onnxruntime session and take turns image by image, so load changes hit both alike):

- seed: tests/reference.py (cv2.imread -> RGB -> PIL -> torchvision Resize/CenterCrop/ToTensor/Normalize
  -> eager torch);
- plain: cv2.imread -> cv2.resize INTER_LINEAR (shorter side 256) -> centre crop -> RGB -> onnxruntime,
  the few lines a competent user writes;
- ours: edge.sources.images.read_image (JPEG decoded reduced in its DCT when large) -> edge.model.preprocess -> onnxruntime.

Parity: each pipeline's 224x224 crop against torchvision's on the full-size decode, in grey levels
(mean and max of |difference| over the six photos). Then whole runs, as a user gets them: per
resolution a folder of 30 JPEGs, and a folder of 50 JPEGs of 50 different sizes (phone and camera
shapes), the plain script's loop (its own default onnxruntime session) against edge-classify's
``--image`` run (``edge.cli.run_images``: decoding and preprocessing one image ahead on a second
thread while the model runs, the model keeping the other cores) and the same run in turn
(``--read-ahead 0``), each in a process of its own, the processes taking turns (ours with its plan
caches emptied before each pass: every size a new resampling plan). Last, the parity of a simulated
``--csi-resize`` (the VIC's filter is not documented: simulated by OpenCV's INTER_AREA and INTER_LINEAR).
mobilenet_v2 FP32 with random weights (speed does not depend on them), by default in onnxruntime on the
CPU; ``--format ts --device cuda`` runs every pipeline's model with TorchScript on a GPU (the seed's eager
model too), where edge-classify's read-ahead decodes on the CPU while the GPU infers.
"""

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the seed pipeline is tests/reference.py, shared with the tests

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
RESOLUTIONS = ((640, 480), (1280, 720), (1920, 1080), (3840, 2160))
PIPELINES = ("seed", "plain", "ours")
RESIZE, SIDE = 256, 224
MIXED_COUNT = 50
FOLDER_COPIES = 5  # a folder per resolution: the six photos five times over


def load_photos() -> List[np.ndarray]:
    from skimage import data

    return [np.ascontiguousarray(getattr(data, name)()[..., :3]) for name in PHOTOS]


def fill(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` scaled (bicubic) to cover ``width`` x ``height`` and centre-cropped to it."""
    h, w = rgb.shape[:2]
    scale = max(width / w, height / h)
    size = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
    scaled = cv2.resize(rgb, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    top, left = (size[1] - height) // 2, (size[0] - width) // 2
    return np.ascontiguousarray(scaled[top:top + height, left:left + width])


def write_frames(folder: Path) -> Dict[str, List[str]]:
    """JPEG files (quality 90) per resolution, named ``WxH``."""
    photos = load_photos()
    files: Dict[str, List[str]] = {}
    for width, height in RESOLUTIONS:
        key = f"{width}x{height}"
        files[key] = []
        for name, rgb in zip(PHOTOS, photos):
            path = folder / f"{key}_{name}.jpg"
            cv2.imwrite(str(path), fill(rgb, width, height)[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
            files[key].append(str(path))
    return files


def write_mixed(folder: Path) -> List[str]:
    """50 JPEGs, each of its own size: phone photos (4:3, 16:9, portrait) from 1 to 12 megapixels."""
    rng = np.random.default_rng(0)
    photos = load_photos()
    paths = []
    for i in range(MIXED_COUNT):
        megapixels = rng.uniform(1.0, 12.0)
        aspect = (4 / 3, 16 / 9, 3 / 2)[i % 3]
        width = int(np.sqrt(megapixels * 1e6 * aspect)) // 2 * 2 + 2 * i  # never two the same
        height = int(width / aspect)
        if i % 4 == 3:
            width, height = height, width
        path = folder / f"mixed_{i:02d}.jpg"
        rgb = fill(photos[i % len(photos)], width, height)
        cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


# ---- the pipelines: the seed in its own process (torch), plain and ours together, interleaved ---------

Pipeline = Tuple[Callable, Callable, Callable]  # decode(path), preprocess(bgr) -> batch, infer(batch) -> logits


def seed_pipeline(artifact: str, device: str) -> Pipeline:
    import torch
    from reference import seed_input, seed_transform

    from export.zoo import build_model

    torch.manual_seed(0)
    model = build_model(Path(artifact).stem).eval().to(device)  # the artifact is named after its architecture
    transform = seed_transform(RESIZE, SIDE)

    def infer(batch) -> np.ndarray:
        with torch.no_grad():
            return model(batch.to(device))[0].cpu().numpy()

    return (lambda path: cv2.imread(path)), (lambda bgr: seed_input(bgr, transform)), infer


def plain_and_ours(artifact: str, device: str) -> Dict[str, Pipeline]:
    """The plain script and ours, sharing one onnxruntime session: the same model run, so the
    difference between them is decode and preprocess alone, and a change in load hits both alike."""
    from edge.model.classify import Classifier
    from edge.cli import DECODE_MARGIN
    from edge.sources.images import read_image

    classifier = Classifier.open(Path(artifact), device=device)
    min_side = DECODE_MARGIN * classifier.spec.resize_side
    infer = classifier.backend.run
    return {"plain": ((lambda path: cv2.imread(path)), (lambda bgr: plain_crop(bgr)[None]), infer),
            "ours": ((lambda path: read_image(Path(path), min_side=min_side)),
                     (lambda bgr: classifier.preprocess(bgr)[None]), infer)}


def plain_crop(bgr: np.ndarray) -> np.ndarray:
    """The usual few lines: INTER_LINEAR to the shorter side 256, centre crop 224, BGR -> RGB."""
    h, w = bgr.shape[:2]
    new_w, new_h = (RESIZE, int(RESIZE * h / w)) if w <= h else (int(RESIZE * w / h), RESIZE)
    resized = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = int(round((new_h - SIDE) / 2.0)), int(round((new_w - SIDE) / 2.0))
    return cv2.cvtColor(resized[top:top + SIDE, left:left + SIDE], cv2.COLOR_BGR2RGB)


def time_prepare(pipeline: Pipeline, path: str, frame: np.ndarray, decoded: np.ndarray) -> Dict[str, float]:
    """Decode the file, preprocess the raw frame, preprocess the decoder's output (the JPEG path's input)."""
    decode, preprocess, _ = pipeline
    times = [time.perf_counter()]
    decode(path)
    times.append(time.perf_counter())
    preprocess(frame)
    times.append(time.perf_counter())
    preprocess(decoded)
    times.append(time.perf_counter())
    return {name: (t1 - t0) * 1e3 for name, (t0, t1) in zip(("decode", "preprocess", "preprocess_jpeg"),
                                                            zip(times, times[1:]))}


def time_infer(pipeline: Pipeline, batch) -> Dict[str, float]:
    times = [time.perf_counter()]
    logits = pipeline[2](batch)
    times.append(time.perf_counter())
    int(np.argmax(logits))
    times.append(time.perf_counter())
    return {"infer": (times[1] - times[0]) * 1e3, "topk": (times[2] - times[1]) * 1e3}


def time_pipelines(pipelines: Dict[str, Pipeline], files: Dict[str, List[str]], rounds: int) -> Dict[str, Dict]:
    """Median ms per stage, per pipeline and resolution; the pipelines take turns image by image.

    Each image's decodes and preprocessing run before its inferences, so they are not timed while
    onnxruntime's pool is still spinning after a run (the model's cost is the same either way)."""
    result: Dict[str, Dict] = {name: {} for name in pipelines}
    for key, paths in files.items():
        raw = [cv2.imread(p) for p in paths]
        decoded = {name: [pipe[0](p) for p in paths] for name, pipe in pipelines.items()}
        batches = {name: [pipe[1](frame) for frame in raw] for name, pipe in pipelines.items()}
        samples: Dict[str, Dict[str, List[float]]] = {name: {} for name in pipelines}
        for round_ in range(rounds + 1):  # the first pass warms up (plans, allocations) and is not counted
            for i, path in enumerate(paths):
                stages = {name: time_prepare(pipe, path, raw[i], decoded[name][i]) for name, pipe in pipelines.items()}
                for name, pipe in pipelines.items():
                    stages[name].update(time_infer(pipe, batches[name][i]))
                if round_:
                    for name, values in stages.items():
                        for stage, ms in values.items():
                            samples[name].setdefault(stage, []).append(ms)
        for name in pipelines:
            result[name][key] = {stage: statistics.median(v) for stage, v in samples[name].items()}
    return result


Runner = Callable[[List[str]], None]  # classifies every path, printing one JSON line each (to /dev/null)
RUNNERS = ("plain", "ours, in turn", "ours")


def folder_runner(artifact: str, name: str, device: str) -> Runner:
    """A whole run over a list of files, as a user gets it: the plain script's loop with its own
    runtime (onnxruntime's defaults, or torch for a TorchScript file), or edge-classify's ``--image``
    run (``edge.cli.run_images``, the code the command runs) in turn (``--read-ahead 0``) or with its
    default read-ahead. Each runs in a process of its own: a spinning onnxruntime pool left by
    another session would slow it."""
    if name == "plain":
        infer = plain_runtime(artifact, device)

        def plain(paths: List[str]) -> None:
            for path in paths:
                logits = infer(plain_crop(cv2.imread(path))[None])
                print(json.dumps({"source": path, "index": int(np.argmax(logits))}))
        return plain

    from edge.model.classify import Classifier
    from edge.cli import build_parser, plan_concurrency, run_images
    from edge.settings import settings_from_args
    from edge.sources.imagecheck import DEFAULT_MAX_PIXELS
    from edge.sources.images import expand_inputs

    requested = 0 if name == "ours, in turn" else None  # None: edge-classify's default for these images
    classifiers: Dict[int, object] = {}  # opened in the untimed first pass, as the command would for these images

    def ours(paths: List[str]) -> None:
        argv = ["--image", *paths, "--json"] + ([] if requested is None else ["--read-ahead", str(requested)])
        settings = settings_from_args(build_parser().parse_args(argv))
        items = expand_inputs(settings.image)
        plan = plan_concurrency(settings, items, gpu=device == "cuda")
        if plan.spare_cores not in classifiers:
            classifiers[plan.spare_cores] = Classifier.open(Path(artifact), device=device,
                                                            spare_cores=plan.spare_cores)
        run_images(settings, classifiers[plan.spare_cores], items, plan, DEFAULT_MAX_PIXELS)
    return ours


def plain_runtime(artifact: str, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """The plain script's model call: the uint8 batch in, one row of logits out."""
    if artifact.endswith(".ts"):
        import torch

        model = torch.jit.load(artifact, map_location=device).eval()

        def run_torch(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(batch).to(device))[0].float().cpu().numpy()
        return run_torch
    import onnxruntime as ort

    providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + ["CPUExecutionProvider"]
    session = ort.InferenceSession(artifact, providers=providers)
    input_name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {input_name: batch})[0][0]


def time_folder(run: Runner, paths: List[str], passes: int) -> List[float]:
    """Seconds per pass over ``paths``, end to end; each pass starts with empty plan caches (every size a
    new plan, as in a fresh process). The first pass warms up (and opens the model) and is not counted."""
    from edge.model.preprocess import crop_plan, prefilter_kernel

    seconds: List[float] = []
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for round_ in range(passes + 1):
            crop_plan.cache_clear()
            prefilter_kernel.cache_clear()
            started = time.perf_counter()
            run(paths)
            if round_:
                seconds.append(time.perf_counter() - started)
    return seconds


def plan_fit_ms() -> float:
    """The per-size plan (prefilter fit included) for a new 4K-ish size, median of 20 sizes."""
    from edge.model.preprocess import crop_plan, prefilter_kernel

    samples = []
    for i in range(20):
        crop_plan.cache_clear()
        prefilter_kernel.cache_clear()
        t0 = time.perf_counter()
        crop_plan(2160 + 2 * i, 3840 + 6 * i, RESIZE, SIDE)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


# ---- parity, measured in the parent (it has torchvision) ------------------------------------------

def torchvision_crop(rgb: np.ndarray) -> np.ndarray:
    from reference import seed_crop

    return seed_crop(rgb, RESIZE, SIDE)


def parity(files: Dict[str, List[str]]) -> Dict[str, Dict[str, Tuple[float, int]]]:
    """(mean, max) |difference| in grey levels against torchvision, per resolution and pipeline."""
    from edge.cli import DECODE_MARGIN
    from edge.sources.images import read_image
    from edge.model.preprocess import resize_and_crop

    result: Dict[str, Dict[str, Tuple[float, int]]] = {}
    for key, paths in files.items():
        diffs: Dict[str, List[np.ndarray]] = {"plain": [], "ours": [], "ours, raw frame": []}
        for path in paths:
            full = cv2.imread(path)
            reference = torchvision_crop(cv2.cvtColor(full, cv2.COLOR_BGR2RGB)).astype(int)
            reduced = read_image(Path(path), min_side=DECODE_MARGIN * RESIZE)
            diffs["plain"].append(np.abs(plain_crop(full).astype(int) - reference))
            diffs["ours"].append(np.abs(resize_and_crop(reduced, RESIZE, SIDE).astype(int) - reference))
            diffs["ours, raw frame"].append(np.abs(resize_and_crop(full, RESIZE, SIDE).astype(int) - reference))
        result[key] = {name: (float(np.mean(d)), int(np.max(d))) for name, d in diffs.items()}
    return result


def csi_parity(files: Dict[str, List[str]]) -> Dict[str, Dict[str, Tuple[float, int]]]:
    """``--csi-resize`` simulated: the frame scaled to the resize size by OpenCV, then our crop."""
    from edge.model.preprocess import resize_and_crop, resized_size

    result: Dict[str, Dict[str, Tuple[float, int]]] = {}
    for key in ("1280x720", "1920x1080"):
        diffs: Dict[str, List[np.ndarray]] = {"INTER_AREA": [], "INTER_LINEAR": []}
        for path in files[key]:
            full = cv2.imread(path)
            reference = torchvision_crop(cv2.cvtColor(full, cv2.COLOR_BGR2RGB)).astype(int)
            new_h, new_w = resized_size(*full.shape[:2], RESIZE)
            for name in diffs:
                scaled = cv2.resize(full, (new_w, new_h), interpolation=getattr(cv2, name))
                diffs[name].append(np.abs(resize_and_crop(scaled, RESIZE, SIDE).astype(int) - reference))
        result[key] = {name: (float(np.mean(d)), int(np.max(d))) for name, d in diffs.items()}
    return result


# ---- the run ---------------------------------------------------------------------------------------

def child(args: List[str]) -> Dict:
    command = [sys.executable, __file__, *args]
    out = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, cwd=REPO)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


def best(runs: List[Dict[str, Dict[str, float]]]) -> Dict[str, Dict[str, float]]:
    """Per resolution, the run with the lowest total (the one the shared machine disturbed least)."""
    return {key: min((r[key] for r in runs), key=lambda stages: sum(stages[s] for s in ("decode", "preprocess",
                                                                                         "infer", "topk")))
            for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed passes per pipeline run (plain and ours)")
    parser.add_argument("--seed-rounds", type=int, default=3, help="timed passes for the seed (eager torch is slow)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each pipeline; best kept")
    parser.add_argument("--folder-repeats", type=int, default=3, help="passes over each folder per run")
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--format", choices=("onnx", "ts"), default="onnx",
                        help="the artifact: ONNX (onnxruntime) or TorchScript (torch; what runs on CUDA without "
                             "onnxruntime-gpu)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where every pipeline runs the model")
    parser.add_argument("--measure", choices=("seed", "plain+ours", "folder"), help=argparse.SUPPRESS)
    parser.add_argument("--runner", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--artifact", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    parser.add_argument("--mixed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        files = json.loads(Path(args.files).read_text())
        if args.measure == "seed":
            print(json.dumps(time_pipelines({"seed": seed_pipeline(args.artifact, args.device)}, files, args.rounds)))
            return
        if args.measure == "folder":
            paths = json.loads(Path(args.mixed).read_text()) if args.folder == "mixed" else files[args.folder]
            runner = folder_runner(args.artifact, args.runner, args.device)
            print(json.dumps(time_folder(runner, paths * (1 if args.folder == "mixed" else FOLDER_COPIES),
                                         args.folder_repeats)))
            return
        pipelines = plain_and_ours(args.artifact, args.device)
        result = time_pipelines(pipelines, files, args.rounds)
        result["plan_fit_ms"] = plan_fit_ms()
        print(json.dumps(result))
        return

    import torch

    from export.exporter import export_artifact
    from export.zoo import build_model

    load_before = os.getloadavg()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_frames(folder)
        (folder / "files.json").write_text(json.dumps(files))
        mixed = write_mixed(folder)
        (folder / "mixed.json").write_text(json.dumps(mixed))
        artifact = str(export_artifact(build_model(args.arch).eval(), folder / f"{args.arch}.{args.format}",
                                       arch=args.arch, labels=[f"class {i}" for i in range(1000)], precision="fp32"))
        runs: Dict[str, List[Dict]] = {name: [] for name in PIPELINES}
        folder_runs: Dict[str, List[float]] = {name: [] for name in RUNNERS}
        folders: Dict[str, Dict[str, List[float]]] = {key: {name: [] for name in RUNNERS} for key in files}
        fits = []
        common = ["--artifact", artifact, "--files", str(folder / "files.json"), "--mixed", str(folder / "mixed.json"),
                  "--folder-repeats", str(args.folder_repeats), "--device", args.device]
        for _ in range(args.repeats):
            runs["seed"].append(child(["--measure", "seed", "--rounds", str(args.seed_rounds), *common])["seed"])
            both = child(["--measure", "plain+ours", "--rounds", str(args.rounds), *common])
            for name in ("plain", "ours"):
                runs[name].append(both[name])
            for key in [*files, "mixed"]:  # each folder and pipeline in a fresh process, as a user's command
                for name in RUNNERS:
                    seconds = child(["--measure", "folder", "--runner", name, "--folder", key, *common])
                    (folder_runs[name] if key == "mixed" else folders[key][name]).extend(seconds)
            fits.append(both["plan_fit_ms"])
        grey = parity(files)
        csi = csi_parity(files)
    fit_ms = statistics.median(fits)
    timing = {name: best(r) for name, r in runs.items()}
    report(args, timing, grey, csi, folder_runs, folders, fit_ms, load_before, os.getloadavg())


def report(args, timing, grey, csi, folder_runs, folders, fit_ms, load_before, load_after) -> None:
    import onnxruntime

    import torch

    runtime = f"onnxruntime {onnxruntime.__version__}" if args.format == "onnx" else "TorchScript"
    runtime += f" on {args.device}"
    gpu = f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else ""
    print(f"{args.arch} FP32, random weights, {runtime}{gpu}; {os.cpu_count()} CPU cores (load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after); OpenCV {cv2.__version__}, torch "
          f"{torch.__version__}; median ms per image over {args.rounds} passes of 6 photos ({args.seed_rounds} for "
          f"the seed), best of {args.repeats} alternating runs")
    print()
    print("JPEG files (decode included):")
    print()
    print("| resolution | pipeline | decode | preprocess | infer | top-k | total | grey levels off torchvision, "
          "mean / max |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    totals: Dict[Tuple[str, str], float] = {}
    for key in grey:
        for name in PIPELINES:
            stages = timing[name][key]
            prep = stages["preprocess_jpeg"]
            total = stages["decode"] + prep + stages["infer"] + stages["topk"]
            totals[(key, name)] = total
            mean, worst = grey[key].get(name, (0.0, 0))
            print(f"| {key} | {name} | {stages['decode']:.2f} | {prep:.2f} | {stages['infer']:.2f} | "
                  f"{stages['topk']:.2f} | {total:.2f} | {mean:.2f} / {worst} |")
    print()
    print("Raw frames in memory (a camera's; no decode):")
    print()
    print("| resolution | pipeline | preprocess | infer | top-k | total | grey levels off torchvision, mean / max |")
    print("|---|---|---:|---:|---:|---:|---:|")
    raw_totals: Dict[Tuple[str, str], float] = {}
    for key in grey:
        for name in PIPELINES:
            stages = timing[name][key]
            total = stages["preprocess"] + stages["infer"] + stages["topk"]
            raw_totals[(key, name)] = total
            mean, worst = grey[key].get("ours, raw frame" if name == "ours" else name, (0.0, 0))
            print(f"| {key} | {name} | {stages['preprocess']:.2f} | {stages['infer']:.2f} | {stages['topk']:.2f} | "
                  f"{total:.2f} | {mean:.2f} / {worst} |")
    ours, vga, hd, uhd = timing["ours"], "640x480", "1920x1080", "3840x2160"
    jpeg_cost = {k: ours[k]["decode"] + ours[k]["preprocess_jpeg"] for k in grey}
    per_image = {key: {name: statistics.median(v) / (len(PHOTOS) * FOLDER_COPIES) * 1e3 for name, v in runs.items()}
                 for key, runs in folders.items()}
    print()
    print(f"Folders, end to end: {len(PHOTOS) * FOLDER_COPIES} JPEGs per resolution (the six photos five times), the "
          f"plain script's loop (its own onnxruntime session, default threads) against edge-classify's --image run "
          f"(edge.cli.run_images, JSON lines to /dev/null), each in its own process, taking turns; median of "
          f"{args.repeats * args.folder_repeats} passes, ms per image:")
    print()
    print("| resolution | plain script | edge-classify, --read-ahead 0 | edge-classify (its default) | "
          "ours / plain |")
    print("|---|---:|---:|---:|---:|")
    for key, row in per_image.items():
        print(f"| {key} | {row['plain']:.2f} | {row['ours, in turn']:.2f} | {row['ours']:.2f} | "
              f"{row['ours'] / row['plain']:.2f} |")
    mixed = {name: statistics.median(v) for name, v in folder_runs.items()}
    print()
    print(f"Mixed-size folder: {MIXED_COUNT} JPEGs, 50 different sizes from 1 to 12 megapixels, end to end, the same "
          f"three processes taking turns, ours with empty plan caches each pass (median of {len(folder_runs['plain'])} "
          f"passes): plain {mixed['plain']:.2f} s, edge-classify in turn {mixed['ours, in turn']:.2f} s, with "
          f"read-ahead {mixed['ours']:.2f} s; a new frame size's plan (prefilter fit included) costs {fit_ms:.2f} ms.")
    print()
    print("| measure | value | target |")
    print("|---|---:|---|")
    print(f"| 4K JPEG decode + preprocess / 640x480 JPEG's | {jpeg_cost[uhd] / jpeg_cost[vga]:.1f}x "
          f"({jpeg_cost[uhd]:.1f} / {jpeg_cost[vga]:.1f} ms) | <= 10x |")
    print(f"| 1080p raw frame preprocess / 640x480 frame's | {ours[hd]['preprocess'] / ours[vga]['preprocess']:.1f}x "
          f"({ours[hd]['preprocess']:.2f} / {ours[vga]['preprocess']:.2f} ms) | <= 3x |")
    for key, row in per_image.items():
        ratio = row["ours"] / row["plain"]
        print(f"| {key} JPEG folder end to end, edge-classify / plain script | {ratio:.2f} | < 1 |")
    for key in grey:
        print(f"| {key} JPEG, sum of stages on one shared session, ours / plain | "
              f"{totals[(key, 'ours')] / totals[(key, 'plain')]:.2f} | |")
    for key in grey:
        ratio = raw_totals[(key, "ours")] / raw_totals[(key, "plain")]
        print(f"| {key} raw frame, sum of stages, ours / plain | {ratio:.2f} | |")
    worst_mean = max(max(grey[k]["ours"][0], grey[k]["ours, raw frame"][0]) for k in grey)
    print(f"| ours, worst mean grey-level difference, any resolution | {worst_mean:.2f} | <= 0.5 |")
    print(f"| mixed-size folder, edge-classify / plain script | {mixed['ours'] / mixed['plain']:.2f} | <= 1.1 |")
    print()
    print("--csi-resize simulated (frame scaled to the resize size, then our crop), mean / max grey levels:")
    print()
    print("| frame | like INTER_AREA (box) | like INTER_LINEAR (no antialias) |")
    print("|---|---:|---:|")
    for key, values in csi.items():
        print(f"| {key} | {values['INTER_AREA'][0]:.2f} / {values['INTER_AREA'][1]} | "
              f"{values['INTER_LINEAR'][0]:.2f} / {values['INTER_LINEAR'][1]} |")


if __name__ == "__main__":
    main()
