"""Labelled copies on disk (``--output``): an image per input, or a video of a stream, never over an input.

    targets = output_targets(Path("labelled"), items)   # OutputError (exit 2) before any work is done
    sink = LabelledImages(targets)                      # labelled/<the path inside the folder given>
    with VideoSink(Path("out.mp4"), fps=30) as video:   # written under a temporary name,
        video.write(draw_label(frame, prediction, fps))  # renamed into place when closed

Every file is written under a temporary name and renamed into place, so a reader never sees half of
one. An output that is an input (the same path, or another name of the same file: a link, ``./``)
would replace the photo or the video being read: a usage error, found before any work is done.
"""


import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.sinks import Result

IMAGE_OUTPUT_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class OutputError(EdgeError, ValueError):
    """An ``--output`` that cannot be used or written; the message is one line."""


def _file_id(path: Path) -> Optional[Tuple[int, int]]:
    """The device and inode of an existing file (the same for every name of it), or None."""
    try:
        info = os.stat(str(path))
    except OSError:
        return None
    return info.st_dev, info.st_ino


def check_not_an_input(outputs: Iterable[Path], inputs: Iterable[Optional[Path]]) -> None:
    """OutputError if writing one of ``outputs`` would replace one of ``inputs`` (same file, by inode)."""
    taken: Set[Tuple[int, int]] = {i for i in map(_file_id, (p for p in inputs if p is not None)) if i}
    for output in outputs:
        if _file_id(output) in taken:  # an output that does not exist yet is no input
            raise OutputError(f"--output {output} is one of the inputs; it would be overwritten: choose another name")


def check_image_suffix(path: Path) -> None:
    """An image output must have a suffix OpenCV encodes, or no suffix (a folder)."""
    suffix = path.suffix.lower()
    if suffix and suffix not in IMAGE_OUTPUT_SUFFIXES and not path.is_dir():
        raise OutputError(f"--output {path}: unknown image suffix {path.suffix!r}; use one of "
                          f"{', '.join(IMAGE_OUTPUT_SUFFIXES)} (or a folder)")


def prepare_folder(folder: Path) -> Path:
    """Create ``folder`` if need be and make sure files can be written in it (OutputError otherwise)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"--output {folder}: a file is in the way of this folder") from None
    except OSError as exc:
        raise OutputError(f"--output {folder}: cannot create this folder ({exc.strerror or exc})") from None
    if not os.access(str(folder), os.W_OK | os.X_OK):
        raise OutputError(f"--output {folder}: this folder is not writable")
    return folder


def output_targets(output: Optional[Path], items: Sequence) -> List[Optional[Path]]:
    """The file each image's labelled copy goes to (None: not written); OutputError for an unusable --output.

    ``--output`` is a folder when there are several images or it names one; the copies mirror the
    folders given (``photos/sub/cat.jpg`` from ``--image photos`` goes to ``OUT/sub/cat.jpg``), and
    names that would collide get a stable suffix. A file otherwise. No target may be one of the inputs.
    """
    if output is None:
        return [None] * len(items)
    check_image_suffix(output)
    several = len(items) > 1 or any(i.from_folder for i in items)
    if several or output.is_dir() or not output.suffix:
        folder = prepare_folder(output)
        targets = [folder / name for name in unique_names([i.relative or i.source for i in items],
                                                          [i.source for i in items])]
        for parent in sorted({t.parent for t in targets}):
            prepare_folder(parent)
    else:
        prepare_folder(output.parent)
        targets = [output]
    check_not_an_input(targets, [i.path for i in items])
    return targets  # type: ignore[return-value]


def mirrored_name(relative: str) -> str:
    """A safe relative output path for an input shown as ``relative``: no root, no ``..``, an image suffix."""
    parts = [p for p in Path(relative).parts if p not in ("", ".", "..", "/") and not Path(p).anchor]
    name = str(Path(*parts)) if parts else "image"
    return name if Path(name).suffix.lower() in IMAGE_OUTPUT_SUFFIXES else name + ".jpg"


def unique_names(relatives: Sequence[str], sources: Sequence[str]) -> List[str]:
    """:func:`mirrored_name` of each input; names that collide get ``-`` and 8 hex digits of the source's hash.

    The suffix depends only on the source, so a rerun writes the same names (stable), and two inputs
    never share an output (case-insensitive, as on an SD card's FAT).
    """
    names = [mirrored_name(r) for r in relatives]
    counts: Dict[str, int] = {}
    for name in names:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    out: List[str] = []
    for source, name in zip(sources, names):
        if counts[name.lower()] > 1:
            stem, suffix = os.path.splitext(name)
            name = f"{stem}-{hashlib.sha1(source.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}{suffix}"
        out.append(name)
    return out


class LabelledImages:
    """``--output`` for images: each input's picture with its label drawn, at the target computed up front."""

    def __init__(self, targets: Sequence[Optional[Path]]) -> None:
        self.targets = list(targets)

    def write(self, result: Result) -> None:
        target = self.targets[result.frame.number]
        if target is not None:
            write_image_atomic(target, result.overlay())

    def close(self) -> None:
        """Nothing to release: each image was renamed into place when written."""


class LabelledVideo:
    """``--output`` for a stream: the frames with their labels, as a video at the source's rate."""

    def __init__(self, path: Path, video_fps: Callable[[], float]) -> None:
        self.video = VideoSink(path, fps=1.0)  # the rate is set when the first frame is known
        self._video_fps = video_fps

    def write(self, result: Result) -> None:
        if self.video.frames == 0:
            self.video.fps = self._video_fps()
        self.video.write(result.overlay())

    def close(self) -> None:
        self.video.close()


def write_image_atomic(path: Path, frame_bgr: np.ndarray) -> None:
    """Encode by the suffix and write via a temporary file, so a reader never sees half an image."""
    path = Path(path)
    suffix = path.suffix.lower() or ".jpg"
    ok, encoded = cv2.imencode(suffix, frame_bgr)
    if not ok:
        raise OutputError(f"cannot encode an image as {suffix}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(encoded.tobytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# Container suffix -> a codec every OpenCV build can write (no H.264: pip's wheels lack an encoder for it).
VIDEO_CODECS: Dict[str, str] = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG"}


class VideoSink:
    """A video file written under a temporary name and renamed into place on ``close()``.

    The writer opens on the first frame (its size is the video's); later frames of another size (a
    camera that came back at another resolution) are scaled to it. A reader never sees a half-written
    file, and a run stopped by SIGTERM still leaves a finished, playable one.
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path = Path(path)
        codec = VIDEO_CODECS.get(self.path.suffix.lower())
        if codec is None:
            raise OutputError(f"{self.path}: unknown video suffix {self.path.suffix or '(none)'!r}; use one of "
                             f"{', '.join(VIDEO_CODECS)}")
        self.fourcc = cv2.VideoWriter_fourcc(*codec)
        self.fps = fps
        self.frames = 0
        self._writer = None
        self._size = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.tmp-{os.getpid()}-", suffix=self.path.suffix,
                                   dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)

    def write(self, frame_bgr: np.ndarray) -> None:
        if self._writer is None:
            self._size = (frame_bgr.shape[1], frame_bgr.shape[0])
            self._writer = cv2.VideoWriter(str(self._tmp), self.fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise OutputError(f"{self.path}: OpenCV cannot write this kind of video here")
        if (frame_bgr.shape[1], frame_bgr.shape[0]) != self._size:
            frame_bgr = cv2.resize(frame_bgr, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame_bgr)
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it into place (nothing is left behind if no frame was written).

        OpenCV's writer says nothing when the disk fills up: the finished file is read back, and one
        with fewer frames than were written is not moved into place (OutputError: exit 2)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()
        if self.frames and self._tmp.exists():
            readable = readable_frames(self._tmp, self.frames)
            if readable < self.frames:
                self._tmp.unlink()
                raise OutputError(f"{self.path}: only {readable} of {self.frames} frames could be written (is the "
                                  "disk full?); the video was not saved")
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.path)
        try:
            self._tmp.unlink()
        except FileNotFoundError:  # renamed into place above
            pass

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def readable_frames(path: Path, expected: int) -> int:
    """How many frames of the video at ``path`` can be read back (counting stops at ``expected``); the decoder's
    own complaints about a damaged file are caught, not shown."""
    from edge.sources.imagecheck import native_warnings

    count = 0
    with native_warnings():
        capture = cv2.VideoCapture(str(path))
        try:
            while count < expected and capture.grab():
                count += 1
        finally:
            capture.release()
    return count


def remove_stale_temporaries(path: Path) -> None:
    """Delete the half-written videos that a killed run (SIGKILL, power loss) left beside ``path``.

    A temporary's name carries its writer's process id; one whose process is gone is never finished.
    """
    pattern = re.compile(r"\." + re.escape(path.stem) + r"\.tmp-(\d+)-[^/]*" + re.escape(path.suffix) + "$")
    for candidate in path.parent.glob(f".{path.stem}.tmp-*{path.suffix}"):
        match = pattern.match(candidate.name)
        if match and not _process_alive(int(match.group(1))):
            try:
                candidate.unlink()
            except OSError:  # another run removed it first, or the folder is read-only: harmless
                pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True
