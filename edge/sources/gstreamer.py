"""What a GStreamer pipeline source is, read from its text: its elements, whether they exist, whether it ends.

OpenCV's GStreamer backend never returns from opening a pipeline whose element is missing
(``nvarguscamerasrc`` off a Jetson) or whose source never sends (a loose CSI ribbon cable, a stuck
nvargus-daemon), and it reports the end of any pipeline as a failed read. So before a pipeline is
opened its elements are looked up, and the first one decides whether it is a finite source::

    elements("videotestsrc num-buffers=40 ! videoconvert ! appsink")   # ['videotestsrc', 'videoconvert', 'appsink']
    missing_elements("nvarguscamerasrc ! nvvidconv ! appsink")          # ['nvarguscamerasrc', 'nvvidconv'] off a Jetson
    is_finite("filesrc location=clip.mp4 ! decodebin ! videoconvert ! appsink")   # True: ends like a video file

The rule for finite (read every frame in order, end of stream ends the run with exit 0, as a video
file does) against live (newest frame only, reconnected when it stops), from the FIRST element:

- finite: any source with ``num-buffers=N`` (N > 0: GstBaseSrc sends N buffers, then end of stream);
  ``filesrc``, ``splitmuxsrc``, ``imagesequencesrc``, ``multifilesrc`` (not with ``loop=true``);
  ``uridecodebin``/``uridecodebin3``/``urisourcebin``/``playbin``/``playbin3`` with a ``file://`` uri.
- live: everything else (``nvarguscamerasrc``, ``v4l2src``, ``rtspsrc``, ``udpsrc``, ``souphttpsrc``,
  ``videotestsrc`` without ``num-buffers``...).

Limits: only the first element is read. A pipeline whose first branch is live but that mixes in a
finite one (a compositor), or a finite source the list does not know (``souphttpsrc`` of a recorded
clip, ``appsrc``), is taken for live: at its end it is reconnected, which replays it; put
``num-buffers=N`` on its source to have it end. The element lookup uses GStreamer's own registry
(python3-gi, else ``gst-inspect-1.0``); with neither it is skipped and only the open timeout is left.
"""

import functools
import logging
import re
import shlex
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

FINITE_SOURCES = ("filesrc", "splitmuxsrc", "imagesequencesrc", "multifilesrc")
URI_SOURCES = ("uridecodebin", "uridecodebin3", "urisourcebin", "playbin", "playbin3")
NVIDIA_ELEMENTS = ("nvarguscamerasrc", "nvvidconv", "nvv4l2camerasrc", "nvv4l2decoder", "nvjpegdec")
INSPECT_TIMEOUT_S = 30.0  # the first gst-inspect-1.0 of a boot may rebuild the plugin registry
_ELEMENT = re.compile(r"[A-Za-z][\w-]*\Z")


def split_links(text: str) -> List[str]:
    """The pipeline's text cut at each ``!`` outside quotes."""
    parts, current, quote = [], [], ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "!":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def parse(text: str) -> List[Tuple[str, Dict[str, str]]]:
    """Each element of a gst-launch pipeline, in order: ``(factory name, {property: value})``.

    Caps (``video/x-raw, width=640``), pad references (``t.``, ``mux.sink_0``) and bin brackets
    are skipped; a text that cannot be tokenized gives what was read before the fault.
    """
    found: List[Tuple[str, Dict[str, str]]] = []
    for link in split_links(text):
        try:
            words = shlex.split(link)
        except ValueError:  # an unclosed quote: GStreamer's parser reports it when the pipeline opens
            break
        if words and "/" in words[0].split("=")[0]:
            continue  # caps
        for word in words:
            name, equals, value = word.partition("=")
            if equals:
                if found:
                    found[-1][1][name.strip()] = value.strip()
            elif _ELEMENT.match(word.strip("()")):  # "(videotestsrc": a bin's bracket
                found.append((word.strip("()"), {}))
    return found


def elements(text: str) -> List[str]:
    """The factory names a pipeline's text asks for, in order."""
    return [name for name, _ in parse(text)]


def is_finite(text: str) -> bool:
    """Whether the pipeline ends by itself (see the module's rule): read like a file, not reconnected."""
    found = parse(text)
    if not found:
        return False
    name, props = found[0]
    if _number(props.get("num-buffers")) > 0:
        return True
    if name == "multifilesrc":
        return props.get("loop", "false").lower() not in ("true", "1", "yes")
    if name in FINITE_SOURCES:
        return True
    return name in URI_SOURCES and props.get("uri", "").lower().startswith("file:")


def missing_elements(text: str) -> Optional[List[str]]:
    """The elements of the pipeline this GStreamer does not have; None when there is no way to ask."""
    names = list(dict.fromkeys(elements(text)))
    answers = [has_element(name) for name in names]
    if any(answer is None for answer in answers):
        return None
    return [name for name, present in zip(names, answers) if not present]


@functools.lru_cache(maxsize=None)
def has_element(name: str) -> Optional[bool]:
    """Whether GStreamer has the element factory ``name``: from python3-gi, else gst-inspect-1.0; None if neither."""
    gst = _gst()
    if gst is not None:
        return gst.ElementFactory.find(name) is not None
    inspect = shutil.which("gst-inspect-1.0")
    if inspect is None:
        return None
    try:
        done = subprocess.run([inspect, name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=INSPECT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("gst-inspect-1.0 %s: %s", name, exc)
        return None
    return done.returncode == 0


@functools.lru_cache(maxsize=1)
def _gst():
    """GStreamer's Python binding (python3-gi), initialized; None where it is not installed."""
    try:
        import gi

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst
    except (ImportError, ValueError, AttributeError) as exc:
        log.debug("no python3-gi GStreamer binding (%s); asking gst-inspect-1.0", exc)
        return None
    try:
        ok = Gst.init_check(None)
    except Exception as exc:  # a broken binding: fall back to gst-inspect-1.0
        log.debug("Gst.init_check: %s", exc)
        return None
    return Gst if (ok[0] if isinstance(ok, tuple) else ok) else None


def missing_hint(name: str) -> str:
    """What to check when the element ``name`` is not there."""
    if name in NVIDIA_ELEMENTS:
        return (f"GStreamer has no element {name}: NVIDIA's camera and video plugins come with JetPack "
                f"(nvidia-l4t-gstreamer); on a Jetson, if gst-inspect-1.0 {name} lists it as blacklisted, "
                "rm ~/.cache/gstreamer-1.0/registry.*.bin")
    return f"GStreamer has no element {name}: a typo, or its plugin is not installed (gst-inspect-1.0 {name})"


def _number(value: Optional[str]) -> int:
    try:
        return int(str(value).strip().strip("\"'"))
    except ValueError:
        return 0
