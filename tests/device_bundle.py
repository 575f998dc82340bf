"""Build the device tests' bundle on the host: ONNX artifacts, photos, a clip and the host's own answers.

The device tiers of CI (JetPack 4.6, 5.1 and 6 rebuilt in venvs: Python 3.6/3.8/3.10 with the OpenCV,
numpy and onnxruntime each ships) have no torch, so the host exports the artifacts once and writes
what its own ``edge-classify`` says about them; each tier runs the same commands on the same files
and must give the same answers (``tests/device``)::

    python tests/device_bundle.py /tmp/bundle          # host: torch, torchvision, skimage
    EDGE_DEVICE_BUNDLE=/tmp/bundle python -m pytest tests/device   # any tier

Layout: ``models/{fp32,fp16}_{uint8,float}.onnx``, ``photos/*.jpg`` (named after the class the photo
model gives them), ``clip.avi`` and ``expected.json``.
"""

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest's photo helpers, when run as a script

from conftest import PHOTO_ARCH, fit_photo_model, load_photos, write_photo_video  # noqa: E402

MODEL_VARIANTS = {  # file stem -> export options
    "fp32_uint8": {"precision": "fp32", "input_kind": "uint8"},
    "fp16_uint8": {"precision": "fp16", "input_kind": "uint8"},
    "fp32_float": {"precision": "fp32", "input_kind": "float"},
    "fp16_float": {"precision": "fp16", "input_kind": "float"},
}
CLIP_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "frame640", "hubble_deep_field")
CLIP_FRAMES_EACH = 5
CLIP_MAX_FRAMES = 30


def build_bundle(folder: Path) -> Path:
    """Write the whole bundle into ``folder`` (created if needed); returns ``folder``."""
    import cv2

    from export.exporter import export_artifact

    folder.mkdir(parents=True, exist_ok=True)
    photos = load_photos()
    names = list(photos)
    model = fit_photo_model(PHOTO_ARCH, [photos[n] for n in names])
    photo_dir = folder / "photos"
    photo_dir.mkdir(exist_ok=True)
    for name, rgb in photos.items():
        assert cv2.imwrite(str(photo_dir / f"{name}.jpg"), np.ascontiguousarray(rgb[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, 95])
    clip = write_photo_video(folder / "clip.avi", photos, CLIP_PHOTOS, CLIP_FRAMES_EACH)
    models = folder / "models"
    models.mkdir(exist_ok=True)
    expected: Dict[str, Dict[str, List[dict]]] = {}
    for stem, options in MODEL_VARIANTS.items():
        path = export_artifact(model, models / f"{stem}.onnx", arch=PHOTO_ARCH, labels=names, **options)
        expected[stem] = {
            "images": classify_json(["--model", str(path), "--image", str(photo_dir)]),
            "stream": classify_json(["--model", str(path), "--source", str(clip),
                                     "--max-frames", str(CLIP_MAX_FRAMES)]),
        }
    (folder / "expected.json").write_text(json.dumps(expected, indent=1), encoding="utf-8")
    return folder


def classify_json(argv: List[str]) -> List[dict]:
    """What ``edge-classify ARGV --json`` prints here, one dict per line."""
    from edge.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv + ["--json", "--quiet"])
    if code != 0:
        raise RuntimeError(f"edge-classify {' '.join(argv)} exited {code} on the host")
    return [json.loads(line) for line in out.getvalue().splitlines()]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/device_bundle.py OUT_DIR")
    print(build_bundle(Path(sys.argv[1])))
