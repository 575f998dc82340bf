"""What edge-train writes beside a checkpoint for people to look at: metrics, curves and a labelled grid.

    write_metrics(Path("runs/d.metrics.json"), summary, history)   # JSON, one object per epoch
    write_curves(Path("runs/d.curves.png"), history, best_epoch)    # loss and accuracy, train and val
    write_val_grid(Path("runs/d.val.png"), crops, predicted, true, classes)

Every file is written to a temporary name and renamed into place, and says it is edge-train's (the JSON's
``format``, the PNGs' ``Software`` text), so a later run replaces it and never a user's file of that name.
Plots use matplotlib's Agg canvas directly (no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .files import METRICS_FORMAT, PNG_SOFTWARE, atomic_path

TILE = 112  # smallest tile side in the grid: 32-pixel images are scaled up to be seen
GRID_COLUMNS = 8
RIGHT, WRONG = (0, 128, 0), (200, 0, 0)


def write_metrics(path: Path, summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> None:
    """``summary`` (arch, classes, best epoch...) and ``history`` (one dict per epoch) as JSON."""
    with atomic_path(path) as tmp:
        document = {"format": METRICS_FORMAT, **summary, "epochs": list(history)}
        tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


def write_curves(path: Path, history: Sequence[Mapping[str, Any]], best_epoch: int) -> None:
    """Loss (left) and accuracy (right) per epoch, train and val; the best epoch marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, acc_axes = figure.subplots(1, 2)
    for axes, key, title in ((loss_axes, "loss", "loss"), (acc_axes, "acc", "accuracy")):
        axes.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label="train")
        axes.plot(epochs, [row[f"val_{key}"] for row in history], "o-", label="val")
        axes.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        if epochs:
            axes.set_xticks(epochs if len(epochs) <= 25 else epochs[:: max(len(epochs) // 12, 1)])
    acc_axes.set_ylim(0, 1.02)
    with atomic_path(path) as tmp:
        figure.savefig(str(tmp), format="png", bbox_inches="tight", metadata={"Software": PNG_SOFTWARE})


def write_val_grid(path: Path, crops: Sequence[Any], predicted: Sequence[int], true: Sequence[int],
                   classes: Sequence[str]) -> None:
    """The validation crops (PIL images, as the model saw them) captioned ``predicted / true``:
    green when right, red when wrong, in a ``make_grid`` saved as ``save_image`` does, with our PNG text."""
    import torch
    import torchvision.transforms.functional as F
    from PIL import Image, PngImagePlugin
    from torchvision.utils import make_grid

    tiles = [F.pil_to_tensor(_captioned(crop, classes[p], classes[t], p == t)) for crop, p, t
             in zip(crops, predicted, true)]
    grid = make_grid(torch.stack(tiles).float() / 255, nrow=min(GRID_COLUMNS, len(tiles)), padding=4, pad_value=1.0)
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(str(tmp), format="PNG", pnginfo=info)


def _captioned(crop, predicted: str, true: str, right: bool):
    """One tile: the crop scaled up to at least ``TILE`` pixels, two lines of caption under it."""
    from PIL import Image, ImageDraw

    side = max(crop.width, TILE)
    scaled = crop.resize((side, side), Image.NEAREST) if crop.width < side else crop
    font = _font(max(11, side // 10))
    line = _line_height(font)
    tile = Image.new("RGB", (side, side + 2 * line + 6), "white")
    tile.paste(scaled, (0, 0))
    draw = ImageDraw.Draw(tile)
    draw.text((3, side + 2), _fit(f"pred: {predicted}", draw, font, side - 6), fill=RIGHT if right else WRONG,
              font=font)
    draw.text((3, side + 3 + line), _fit(f"true: {true}", draw, font, side - 6), fill=(0, 0, 0), font=font)
    return tile


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom - min(top, 0)) + 2


def _fit(text: str, draw, font, width: int) -> str:
    """``text``, cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."

