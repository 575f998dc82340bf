"""Argument types for the four commands' parsers: a bad value is argparse's one-line usage error, exit 2.

Standard library only (edge-classify on the device and edge-export/edge-train on the host share them)::

    parser.add_argument("--epochs", type=positive_int)
    parser.add_argument("--threshold", type=probability)
    parser.add_argument("--roi", type=roi)                       # "320,0,640,720" -> (320, 0, 640, 720)
"""

import argparse
import math
from typing import Tuple


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):  # "not >" also refuses NaN
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def fraction(text: str) -> float:
    """Strictly between 0 and 1 (a share of a data set)."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability between 0 and 1, not {text}")
    return value


def roi(text: str) -> Tuple[int, int, int, int]:
    """``--roi X,Y,W,H``: a region of interest in the frame's pixels."""
    from edge.sources.sourcelist import parse_roi

    try:
        return parse_roi(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
