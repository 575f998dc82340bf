"""The bundle the device tests run on, and how they run the installed commands.

Under CI's JetPack tiers ``$EDGE_DEVICE_BUNDLE`` names a bundle the host exported earlier in the same
run; without it (the host's own run) the bundle is built here, which needs torch. These tests import
no torch, skimage or PIL, and run on Python 3.6 with numpy 1.19 and OpenCV 4.1.1.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Sequence

import pytest

BUNDLE_ENV = "EDGE_DEVICE_BUNDLE"


class Bundle(NamedTuple):
    folder: Path
    models: Dict[str, Path]  # stem (fp32_uint8, fp16_float, ...) -> artifact
    photos: Path
    clip: Path
    expected: Dict[str, Dict[str, List[dict]]]  # stem -> {"images": [...], "stream": [...]}


class Run(NamedTuple):
    code: int
    out: str
    err: str

    def json_lines(self) -> List[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


def load_bundle(folder: Path) -> Bundle:
    models = {path.stem: path for path in sorted((folder / "models").glob("*.onnx"))}
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    return Bundle(folder, models, folder / "photos", folder / "clip.avi", expected)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Bundle:
    given = os.environ.get(BUNDLE_ENV)
    if given:
        return load_bundle(Path(given))
    pytest.importorskip("torch", reason=f"no ${BUNDLE_ENV} and no torch to build the bundle here")
    from device_bundle import build_bundle

    return load_bundle(build_bundle(tmp_path_factory.mktemp("bundle")))


def command(name: str) -> List[str]:
    """The installed console script ``name`` (beside this Python), as a user runs it."""
    script = Path(sys.executable).parent / name
    found = str(script) if script.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed beside {sys.executable}")
    return [found]


def run(name: str, *argv: object, env: Dict[str, str] = None, timeout: float = 120) -> Run:
    """Run an installed command; its exit code, stdout and stderr."""
    environ = dict(os.environ, **(env or {}))
    environ.pop("NOTIFY_SOCKET", None)
    done = subprocess.run(command(name) + [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout, env=environ)
    return Run(done.returncode, done.stdout, done.stderr)


def one_line(err: str) -> str:
    """stderr of a failed run: exactly one line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def same_answers(got: Sequence[dict], expected: Sequence[dict], *, score_tolerance: float) -> None:
    """Same sources, labels and indices in the same order; softmax scores within ``score_tolerance``.

    Scores may differ a little between tiers: each OpenCV decodes JPEG with its own libjpeg build, and
    each onnxruntime has its own kernels (FP16 above all).
    """
    assert [_identity(r) for r in got] == [_identity(r) for r in expected]
    for mine, theirs in zip(got, expected):
        assert abs(mine["score"] - theirs["score"]) <= score_tolerance, (mine, theirs)


def _identity(result: dict) -> tuple:
    """What must match exactly: which file or frame, and its top-1 (the bundle's folder may have moved)."""
    return Path(str(result.get("source"))).name, result.get("frame"), result["label"], result["index"]
