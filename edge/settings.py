"""What one run of edge-classify does, as one frozen object built once from the command line.

    settings = settings_from_args(build_parser().parse_args(argv))     # edge.cli
    problem = check_settings(settings)                                  # None, or one line (exit 2)

Nothing below the command line sees argparse's Namespace: the pipeline, the sources and the sinks
read these fields (their names are the flags'). Every value is checked here, once, for whichever
input it goes with; ``edge-service install`` runs the same checks on the flags it will start with.
"""

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Tuple

from edge.contract import CROP_MODES, DEFAULT_CROP, MAX_BATCH
from edge.model.swap import check_swap_settings
from edge.collect.sampler import CollectOptions, check_collect_options
from edge.sinks.telemetry import TelemetryOptions, check_telemetry_arguments
from edge.sinks.web import check_serve_arguments


@dataclass(frozen=True)
class Settings:
    """The flags of one run of edge-classify (``None``: not given; see ``edge-classify --help``)."""

    model: Optional[Path] = None
    image: Optional[Tuple[str, ...]] = None  # --image: files, folders, globs
    camera: Tuple[int, ...] = ()  # --camera, repeatable
    source: Tuple[str, ...] = ()  # --source, repeatable
    sources: Optional[Path] = None  # --sources FILE
    max_batch: int = 8
    labels: Optional[Path] = None
    topk: int = 1
    json: bool = False
    output: Optional[Path] = None
    max_pixels: Optional[int] = None
    backend: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None
    verbose: bool = False
    quiet: bool = False
    display: bool = False
    fullscreen: bool = False
    loop: bool = False
    max_frames: Optional[int] = None
    smooth: int = 1
    threshold: float = 0.0
    crop: str = DEFAULT_CROP  # how a frame becomes the model's square: a setting of the run, not of the model
    roi: Optional[Tuple[int, int, int, int]] = None  # x, y, w, h: the part of the frame the model sees
    width: Optional[int] = None
    height: Optional[int] = None
    fps: Optional[float] = None
    csi_resize: bool = False
    read_ahead: Optional[int] = None
    reconnect: Optional[int] = None  # tries to get a lost live source back; 0: forever; None: by systemd
    stats_interval: float = 5.0
    benchmark: bool = False
    serve: Optional[str] = None  # --serve [HOST:]PORT: the live view (edge.sinks.web)
    serve_fps: float = 5.0
    telemetry: Optional[TelemetryOptions] = None  # --mqtt..., --metrics-port
    watch_model: bool = False  # --watch-model, --canary DIR, --canary-min P: edge.model.swap
    canary: Optional[Path] = None
    canary_min: Optional[float] = None
    mqtt_allow_model_updates: bool = False
    collect: Optional[CollectOptions] = None  # --collect DIR and its samplers (edge.collect.sampler)

    def __post_init__(self) -> None:
        for name in ("camera", "source"):  # one value, or a repeated flag's list: a tuple either way
            value = getattr(self, name)
            if value is None or isinstance(value, (int, str)):
                object.__setattr__(self, name, () if value is None else (value,))
            else:
                object.__setattr__(self, name, tuple(value))

    @property
    def streaming(self) -> bool:
        """A camera, video or stream (frames until stopped), not a list of images."""
        return self.image is None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The parsed command line as :class:`Settings` (the one place a Namespace is read)."""
    built = ("telemetry", "collect")  # their own options objects, from their own flags
    values = {f.name: getattr(args, f.name, f.default) for f in fields(Settings) if f.name not in built}
    if values["image"] is not None:
        values["image"] = tuple(values["image"])
    return Settings(telemetry=TelemetryOptions.from_args(args), collect=CollectOptions.from_args(args), **values)


def check_settings(settings: Settings) -> Optional[str]:
    """What is wrong with the values given, whichever the input (a bad value is never silently ignored)."""
    for problem in (_number_problem(settings), _combination_problem(settings)):
        if problem:
            return problem
    if settings.telemetry is not None or settings.image:
        problem = check_telemetry_arguments(_TelemetryFlags(settings))
        if problem:
            return problem
    problem = check_swap_settings(settings)
    if problem:
        return problem
    return check_serve_arguments(settings) or check_collect_options(settings.collect)


def _number_problem(s: Settings) -> Optional[str]:
    checks = (
        (s.topk < 1, f"--topk must be at least 1, not {s.topk}"),
        (not 0.0 <= s.threshold <= 1.0, f"--threshold is a probability between 0 and 1, not {s.threshold}"),
        (s.smooth < 1, f"--smooth must be at least 1 frame, not {s.smooth}"),
        (not s.stats_interval >= 0, f"--stats-interval must be 0 (never) or more seconds, not {s.stats_interval}"),
        (s.max_frames is not None and s.max_frames < 1, f"--max-frames must be at least 1, not {s.max_frames}"),
        (s.read_ahead is not None and s.read_ahead < 0, f"--read-ahead must be 0 or more, not {s.read_ahead}"),
        (s.threads is not None and s.threads < 1, f"--threads must be at least 1, not {s.threads}"),
        (s.crop not in CROP_MODES, f"--crop must be one of {', '.join(CROP_MODES)}, not {s.crop}"),
        (not 1 <= s.max_batch <= MAX_BATCH, f"--max-batch must be 1 to {MAX_BATCH}, not {s.max_batch}"),
    )
    for bad, message in checks:
        if bad:
            return message
    for flag in ("width", "height", "fps"):
        value = getattr(s, flag)
        if value is not None and not 0 < value < 100_000:
            return f"--{flag} must be a positive number, not {value}"
    return None


def _combination_problem(s: Settings) -> Optional[str]:
    if s.fullscreen and not s.display:
        return "--fullscreen goes with --display"
    streams = bool(s.camera or s.source or s.sources)
    if s.image is None and not streams:
        return "say what to classify: --image PATH..., or --camera N, --source URI or --sources FILE"
    if s.image is not None and streams:
        return "--image classifies files; cameras, videos and streams (--camera, --source, --sources) run on their own"
    if s.image is None and s.roi is not None and s.csi_resize:
        return "--roi is in the camera's pixels; with --csi-resize the frames arrive scaled: use one or the other"
    if s.image is None:
        return None
    if s.roi is not None:
        return "--roi is for cameras, videos and streams (--camera, --source), not --image"
    for flag, given in (("--display", s.display), ("--loop", s.loop), ("--smooth", s.smooth > 1),
                        ("--csi-resize", s.csi_resize), ("--reconnect", s.reconnect is not None)):
        if given:
            return f"{flag} is for cameras, videos and streams (--camera, --source), not --image"
    return None


class _TelemetryFlags:
    """The telemetry checks read flags by name (``edge.sinks.telemetry.check_telemetry_arguments``)."""

    def __init__(self, settings: Settings) -> None:
        self._options = settings.telemetry or TelemetryOptions()
        self.image = settings.image

    def __getattr__(self, name: str) -> Any:
        return getattr(self._options, name)
