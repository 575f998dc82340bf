"""The one classify step shared by ``--image`` and the camera loop: frame -> Prediction.

    classifier = Classifier.open(Path("mobilenet_v2.onnx"), topk=5)
    prediction = classifier.classify(cv2.imread("cat.jpg"))
    prediction.label, prediction.score, prediction.ms      # 'tabby', 0.83, {'preprocess': 0.4, 'infer': 5.1}

``crop`` (``--crop``: center, full, letterbox) is how every frame becomes the model's square; ``roi``
(``--roi``, per call, so each source may have its own) is the part of the frame the model sees::

    classifier = Classifier.open(Path("m.onnx"), crop="letterbox")
    classifier.classify(frame, roi=(320, 0, 640, 720))       # x, y, w, h: the model sees frame[0:720, 320:960]

Logits that are not finite (a model whose arithmetic overflowed: FP16 past 65504, a bad weight) give
no ranking: such a frame is a :class:`ClassifyError` (one failed input), and a model that does it on
the load-time test frame is refused at load. Scores written out are cut, never rounded up (:func:`cut`),
so a score below ``--threshold`` never reads as reaching it.
"""


import time
from dataclasses import dataclass, field, replace
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge.model.artifact import ArtifactError, ModelSpec, read_labels, spec_from_metadata
from edge.model.backends import Backend, BackendError, open_backend
from edge.errors import EdgeError
from edge.contract import DEFAULT_CROP, MAX_BATCH
from edge.model.preprocess import Preprocessor, apply_roi

Roi = Optional[Tuple[int, int, int, int]]  # x, y, w, h in the frame's pixels (edge.argtypes.roi parses --roi)


class ClassifyError(EdgeError, RuntimeError):
    """A model or an input that cannot be classified; the message is one line for the user."""


@dataclass(frozen=True)
class TopK:
    label: str
    index: int
    score: float

    def to_dict(self) -> Dict[str, object]:
        return {"label": self.label, "index": self.index, "score": float(cut(self.score, SCORE_DECIMALS))}


SCORE_DECIMALS = 6  # of a probability in JSON


def cut(value: float, decimals: int, scale: int = 1) -> Decimal:
    """``value * scale`` cut (floored) to ``decimals``, from the shortest decimal that is the float (``repr``).

    Rounding would show 0.8999996 as 0.9; cutting keeps every shown score on the same side of a
    threshold as the score itself (a threshold typed with at most ``decimals`` digits).
    """
    return (Decimal(repr(float(value))) * scale).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_FLOOR)


UNKNOWN = "unknown"


@dataclass(frozen=True)
class Prediction:
    """The argmax class, its softmax probability, the top-k, and how long each step took.

    ``index`` is None when the label is ``unknown`` (the best score fell below ``--threshold``).
    """

    label: str
    index: Optional[int]
    score: float
    topk: Tuple[TopK, ...]
    probabilities: np.ndarray = field(repr=False, compare=False)
    ms: Dict[str, float] = field(default_factory=dict, compare=False)

    def to_dict(self) -> Dict[str, object]:
        """The JSON fields: label, index, score, topk, ms."""
        return {
            "label": self.label,
            "index": self.index,
            "score": float(cut(self.score, SCORE_DECIMALS)),
            "topk": [k.to_dict() for k in self.topk],
            "ms": {name: round(value, 3) for name, value in self.ms.items()},
        }


class Classifier:
    """An artifact, its spec and its preprocessing, behind one ``classify(frame)`` call.

    ``crop``: one of ``edge.contract.CROP_MODES`` (``center``, torchvision's eval transform, by default).
    """

    def __init__(self, backend: Backend, spec: ModelSpec, topk: int = 5, crop: str = DEFAULT_CROP) -> None:
        if topk < 1:
            raise ClassifyError(f"--topk must be at least 1, not {topk}")
        self.backend = backend
        self.spec = spec
        self.topk = min(topk, spec.num_classes)
        try:
            self.preprocess = Preprocessor(spec, crop)
        except ValueError as exc:
            raise ClassifyError(f"--crop: {exc}") from None
        # A graph with a dynamic batch axis takes several frames in one run (several sources); a fixed one, one.
        first = (getattr(backend, "input_shape", None) or [None])[0]
        self.max_batch = 1 if isinstance(first, int) else MAX_BATCH
        self.fixed_batch: Optional[int] = None  # every batch padded to this size (see fix_batch)

    @classmethod
    def open(cls, model: Path, *, backend: str = "auto", device: str = "auto", labels: Optional[Path] = None,
             topk: int = 5, threads: Optional[int] = None, spare_cores: int = 0,
             crop: str = DEFAULT_CROP) -> "Classifier":
        """Load ``model``; its metadata gives labels and sizes (``labels`` overrides the label names).

        ``spare_cores``: on a CPU, leave that many cores to work beside the model (see ``open_backend``).
        ``crop``: how frames become the model's square (``--crop``).
        """
        try:
            runtime = open_backend(Path(model), backend, device, threads, spare_cores)
            spec = spec_from_metadata(runtime.metadata, input_shape=runtime.input_shape,
                                      input_dtype=runtime.input_dtype, num_classes=runtime.num_classes,
                                      name=Path(model).name)
            if labels is not None:
                spec = spec.with_labels(read_labels(labels))
        except (BackendError, ArtifactError) as exc:
            raise ClassifyError(str(exc)) from None
        classifier = cls(runtime, spec, topk, crop)
        classifier.warm_up()
        return classifier

    def release(self) -> None:
        """Let go of the runtime (a model swapped out while others still hold this object): its memory is freed."""
        self.backend = None  # type: ignore[assignment]

    def warm_up(self) -> None:
        """One inference on a blank frame, so a model that cannot run fails at load (exit 2), not on frame 1.

        It also checks what comes out: one row of ``num_classes`` logits.
        """
        side = self.spec.input_side
        try:
            logits = self.backend.run(self.preprocess(np.zeros((side, side, 3), np.uint8))[None])
        except (BackendError, ValueError) as exc:
            raise ClassifyError(f"the model fails on a test input: {exc}") from None
        shape = tuple(np.shape(logits))
        if shape != (1, self.spec.num_classes):
            raise ClassifyError(f"the model gives outputs of shape {list(shape)} for one image; expected "
                                f"[1, {self.spec.num_classes}] (one score per label)")
        try:
            check_finite(logits[0])
        except ClassifyError as exc:
            raise ClassifyError(f"the model fails on a test input: {exc}") from None

    def fix_batch(self, size: int) -> None:
        """Run every :meth:`classify_many` batch at ``size`` frames (short ones padded), and once now.

        For TensorRT (through onnxruntime), which builds an engine per input shape it meets: with batches of
        1 to N frames, each new size would build another mid-run, minutes on a Nano while every source waits.
        One size, built here at load (before READY), is all the run ever uses; the padding costs GPU time
        only, which a batch shares.
        """
        self.fixed_batch = min(max(size, 1), self.max_batch)
        side = self.spec.input_side
        self.classify_many([np.zeros((side, side, 3), np.uint8)])

    @property
    def crop(self) -> str:
        """``--crop``: how each frame becomes the model's square."""
        return self.preprocess.crop

    def classify(self, frame_bgr: np.ndarray, roi: Roi = None) -> Prediction:
        """Preprocess, infer and rank one BGR uint8 frame (the model sees only ``roi``, x, y, w, h, if given)."""
        started = time.perf_counter()
        batch = self.prepare(frame_bgr, roi)
        return self.classify_prepared(batch, {"preprocess": (time.perf_counter() - started) * 1e3})

    def prepare(self, frame_bgr: np.ndarray, roi: Roi = None) -> np.ndarray:
        """One BGR uint8 frame -> the model's batch of one (safe to call on another thread than the model's).

        ``roi``: ``(x, y, w, h)``, the part of the frame the model sees; ``edge.model.preprocess.RoiError`` (an
        EdgeError and a ValueError: one line, exit 2) when it does not lie inside the frame.
        """
        region = apply_roi(frame_bgr, roi)
        try:
            return self.preprocess(region)[None]
        except ValueError as exc:
            raise ClassifyError(str(exc)) from None

    def classify_prepared(self, batch: np.ndarray, ms: Optional[Dict[str, float]] = None) -> Prediction:
        """Infer and rank a batch of one from :meth:`prepare`; ``ms`` (timings so far) is carried into the result."""
        started = time.perf_counter()
        logits = self.backend.run(batch)[0]  # BackendError (one line) if the runtime fails
        inferred = time.perf_counter()
        prediction = self.prediction_from_logits(logits, ms)
        prediction.ms.update(infer=(inferred - started) * 1e3, topk=(time.perf_counter() - inferred) * 1e3)
        return prediction

    def classify_many(self, frames_bgr: Sequence[np.ndarray], rois: Optional[Sequence[Roi]] = None
                      ) -> List[Prediction]:
        """Several frames (one per source, each with its ``roi`` or None) in one run of the model, at most
        ``max_batch``. Each prediction carries its own preprocess and top-k times and the batch's infer time (what
        its frame waited for)."""
        if not 0 < len(frames_bgr) <= self.max_batch:
            raise ClassifyError(f"{len(frames_bgr)} frames in one batch; this model takes 1 to {self.max_batch}")
        inputs, prepared_ms = [], []
        for frame, roi in zip(frames_bgr, rois or [None] * len(frames_bgr)):
            started = time.perf_counter()
            inputs.append(self.prepare(frame, roi)[0])
            prepared_ms.append((time.perf_counter() - started) * 1e3)
        padding = max(0, (self.fixed_batch or 0) - len(inputs))
        started = time.perf_counter()
        logits = self.backend.run(np.stack(inputs + [inputs[0]] * padding))
        infer_ms = (time.perf_counter() - started) * 1e3
        if np.shape(logits) != (len(inputs) + padding, self.spec.num_classes):
            raise ClassifyError(f"the model gives outputs of shape {list(np.shape(logits))} for "
                                f"{len(inputs) + padding} images")
        logits = logits[:len(inputs)]
        predictions = []
        for row, preprocess_ms in zip(logits, prepared_ms):
            started = time.perf_counter()
            prediction = self.prediction_from_logits(row, {"preprocess": preprocess_ms, "infer": infer_ms})
            prediction.ms["topk"] = (time.perf_counter() - started) * 1e3
            predictions.append(prediction)
        return predictions

    def prediction_from_logits(self, logits: np.ndarray, ms: Optional[Dict[str, float]] = None) -> Prediction:
        """Softmax and rank one frame's logits; ClassifyError if any is NaN or infinite."""
        check_finite(logits)
        return self.prediction_from_probabilities(softmax(logits), ms)

    def prediction_from_probabilities(self, probs: np.ndarray, ms: Optional[Dict[str, float]] = None) -> Prediction:
        """Rank a probability vector (one frame's, or several frames' average when smoothing)."""
        check_finite(probs, "probabilities")
        order = top_indices(probs, self.topk)
        labels = self.spec.labels
        top = tuple(TopK(labels[i], int(i), float(probs[i])) for i in order)
        return Prediction(top[0].label, top[0].index, top[0].score, top, probs, dict(ms or {}))


def with_threshold(prediction: Prediction, threshold: float) -> Prediction:
    """``prediction``, or the same one labelled ``unknown`` (index None) when its score is below ``threshold``."""
    if prediction.score >= threshold:
        return prediction
    return replace(prediction, label=UNKNOWN, index=None)


def check_finite(values: np.ndarray, what: str = "scores") -> None:
    """ClassifyError unless every value is a finite number (NaN would rank anywhere and print as ``nan%``)."""
    finite = np.isfinite(values)
    if not finite.all():
        raise ClassifyError(f"the model's {what} are not finite numbers ({finite.size - np.count_nonzero(finite)} of "
                            f"{finite.size} NaN or infinite: its arithmetic overflowed on this input)")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of one logits vector, in float64."""
    shifted = np.asarray(logits, np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return exp / exp.sum()


def top_indices(values: np.ndarray, k: int) -> Sequence[int]:
    """Indices of the ``k`` largest values, largest first (ties: lower index first)."""
    if k == 1:
        return [int(np.argmax(values))]
    if k >= len(values):
        return list(np.argsort(-values, kind="stable"))
    part = np.argpartition(-values, k - 1)[:k]
    return list(part[np.lexsort((part, -values[part]))])
