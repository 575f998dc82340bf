"""Results on the console: a human line per image or per label change, or a JSON line per image or frame.

    print(format_line("cat.jpg", prediction, topk=3))
    print(json_line({"source": "cat.jpg", **prediction.to_dict()}))
    sink = ConsoleSink(json=False, topk=1, every_result=False)    # a stream: a line when the label changes

Labels come from the model file or a labels file, names from the file system: both may hold control
characters, so everything shown to a person goes through :func:`printable` (a newline or an ANSI
escape in a label must not forge an output line or recolour a terminal). JSON is escaped by ``json``.
A name that is not UTF-8 (a file name's bytes kept as lone surrogates) or a label holding a lone
surrogate cannot be written as UTF-8 at all: :func:`printable` escapes them (``\\udce9``), and
:func:`json_line` then writes ``\\u`` escapes (``ensure_ascii``), which JSON readers turn back into
the same string. Percentages are cut, never rounded up (:func:`percent`): ``unknown (89.9%)`` at
``--threshold 0.9``, never ``unknown (90.0%)``.
"""


import codecs
import json
import math
import sys
import unicodedata
from typing import Dict, Mapping, Optional

from edge.model.classify import Prediction, cut
from edge.sinks import Result


ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs")  # control, format (bidi overrides), lone surrogates


def printable(text: str) -> str:
    """``text`` with control, bidi-format and lone surrogate characters escaped (``\\n``, ``\\x1b``, ``\\u202e``,
    ``\\udce9``), and whatever stdout's encoding cannot hold (Python 3.6 in the C locale: ASCII) as
    ``\\u`` escapes; the rest as is."""
    escaped = "".join(_escape(c) if unicodedata.category(c) in ESCAPED_CATEGORIES else c for c in str(text))
    encoding = stdout_encoding()
    return escaped if _encodable(escaped, encoding) else escaped.encode(encoding, "backslashreplace").decode(encoding)


def stdout_encoding() -> str:
    """What stdout encodes text with (UTF-8 where it does not say, or names a codec Python does not know)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        return "utf-8"
    return encoding


def _encodable(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def percent(score: float, decimals: int = 1) -> str:
    """``score`` as a percentage cut (not rounded) to ``decimals``: 0.8999 -> ``89.9%``, never ``90.0%``.

    The cut is taken on the shortest decimal that is the float (``repr``), so a score equal to a
    threshold the user typed (0.29) shows as that number (29.0%), and one below it shows below it.
    """
    value = float(score)
    if not math.isfinite(value):
        return f"{value}%"
    return f"{cut(value, decimals, 100):f}%"


def _escape(char: str) -> str:
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def format_line(source: str, prediction: Prediction, topk: int = 1, note: str = "") -> str:
    """``source: label (83.1%) note``, with the runners-up indented under it when ``topk`` > 1."""
    line = (f"{printable(source)}: {printable(prediction.label)} ({percent(prediction.score)})"
            + (f"  {note}" if note else ""))
    if topk > 1:
        line += "".join(f"\n    {rank}. {printable(k.label)} ({percent(k.score)})"
                        for rank, k in enumerate(prediction.topk[:topk], start=1))
    return line


def json_line(record: Mapping[str, object], encoding: Optional[str] = None) -> str:
    """``record`` as one line of JSON, non-ASCII text as is where ``encoding`` (default: stdout's) can
    hold it; otherwise (a lone surrogate, a non-UTF-8 file name, an ASCII stdout) as ``\\u`` escapes."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if _encodable(text, encoding or stdout_encoding()):
        return text
    return json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


class ConsoleSink:
    """``--json``: every result as a JSON line; else a human line for every image (``every_result``), or,
    for a stream, when the label changes, with the frame number and FPS."""

    def __init__(self, json: bool, topk: int, every_result: bool) -> None:
        self.json = json
        self.topk = topk
        self.every_result = every_result
        self._last_label: Dict[str, str] = {}  # per source: a change is a change of that source's label

    def write(self, result: Result) -> None:
        prediction = result.prediction
        if self.json:
            print(json_line(result.record), flush=True)
        elif self.every_result:
            print(format_line(result.name, prediction, self.topk), flush=True)
        elif prediction.label != self._last_label.get(result.name):
            note = f"[frame {result.number}" + (f", {result.fps:.1f} fps]" if result.fps else "]")
            print(format_line(result.name, prediction, self.topk, note), flush=True)
        self._last_label[result.name] = prediction.label

    def close(self) -> None:
        """Nothing to release: every line was flushed when written."""
