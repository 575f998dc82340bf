"""The training run behind ``edge-train``: fine-tune a torchvision classifier on a folder of photos into a
checkpoint that exports in one step (the command's parser is in ``export.cli``).

    edge-train --data photos/ --epochs 25 --out runs/photos.pt
    edge-export --checkpoint runs/photos.pt --out photos.onnx
    edge-classify --model photos.onnx --image photos/val

The recipe is the PyTorch transfer-learning tutorial's: RandomResizedCrop + horizontal flip for training,
Resize + CenterCrop for validation (the transform edge.preprocess reproduces on the device), ImageNet
mean/std, SGD with momentum, StepLR. Beside ``--out runs/photos.pt`` it writes:

    runs/photos.pt            the best epoch by val accuracy (what edge-export takes)
    runs/photos.last.pt       the latest epoch (what --resume takes to go on)
    runs/photos.metrics.json  loss, accuracy, learning rate and time per epoch
    runs/photos.curves.png    loss and accuracy curves
    runs/photos.val.png       validation images with predicted and true labels, from the best epoch

Every file is written to a temporary name and renamed, so an interrupted run leaves whole files. Exit
codes: 0 done; 1 training failed (a write error, out of memory, a diverging loss); 2 usage error or data
that cannot be trained on; 130 interrupted (go on with ``--resume runs/photos.last.pt``).

    code = run(build_train_parser().parse_args(["--data", "photos/", "--out", "runs/photos.pt"]))
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from edge.contract import DEFAULT_INTERPOLATION
from edge.errors import EXIT_INTERRUPTED, EXIT_OK

from ..errors import TrainingError, UsageError
from ..load import error_reason, load_fitting_weights, pretrained_unavailable, read_state_dict
from ..zoo import IMAGENET_MEAN, IMAGENET_STD, Arch, backbone_blocks, build_model, get_arch, pretrained_weights
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, VERIFY_IMAGES, CheckpointError, load_checkpoint,
                         save_checkpoint)
from .data import (ImageFiles, ImageFolders, collate_readable, eval_crop, eval_transform, find_image_folders,
                   open_rgb, resize_for, spread_across_classes, to_normalised_tensor, train_transform)
from .report import write_curves, write_metrics, write_val_grid

log = logging.getLogger("edge-train")


@dataclass(frozen=True)
class Settings:
    """One run's settings: the flags, merged as flags > the resumed checkpoint's > defaults."""

    data: str
    out: str
    arch: str
    weights: str
    mode: str
    freeze: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    step_size: int
    gamma: float
    image_size: int
    augment: str
    val_fraction: float
    seed: int
    workers: int
    device: str


DEFAULTS: Dict[str, Any] = dict(
    data=None, out=None, arch="mobilenet_v2", weights="pretrained", mode="finetune", freeze=0, epochs=25,
    batch_size=32, lr=0.001, momentum=0.9, step_size=7, gamma=0.1, image_size=None, augment="default",
    val_fraction=0.2, seed=0, workers=min(4, max((os.cpu_count() or 1) - 1, 0)), device="auto")
# A resumed run keeps the model, data split and optimiser it started with; only these may change.
CHANGEABLE_ON_RESUME = ("data", "out", "epochs", "batch_size", "workers", "device")


@dataclass(frozen=True)
class RunFiles:
    """The files a run writes beside ``--out``."""

    best: Path
    last: Path
    metrics: Path
    curves: Path
    grid: Path

    @classmethod
    def beside(cls, out: Path) -> "RunFiles":
        stem = out.name[: -len(out.suffix)] if out.suffix else out.name
        return cls(out, out.with_name(f"{stem}.last{out.suffix}"), out.with_name(f"{stem}.metrics.json"),
                   out.with_name(f"{stem}.curves.png"), out.with_name(f"{stem}.val.png"))


def _refuse_overwriting_weights(files: RunFiles, weights: str) -> None:
    """``--weights runs/a.pt --out runs/a.pt``: the run would replace the file it starts from after epoch 1."""
    source = Path(weights)
    if weights in ("pretrained", "none") or not source.is_file():
        return
    for written in (files.best, files.last):
        if written.exists() and written.samefile(source):
            raise UsageError(f"--out would overwrite the --weights file {source} ({written.name}); choose another --out "
                             "(to go on from a run, use --resume)")


@dataclass(frozen=True)
class EpochStats:
    loss: float
    acc: float
    correct: int
    count: int


@dataclass
class Progress:
    """Epochs done, the best one so far, and one row of metrics per epoch."""

    epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> "Progress":
        epoch = int(ckpt["epoch"])
        return cls(epoch, float(ckpt["best_acc"]), int(ckpt["best_epoch"]),
                   [dict(row) for row in ckpt.get("history", [])][:epoch])

    def record(self, row: Dict[str, Any]) -> bool:
        """Add an epoch's row; whether it is the best so far (ties keep the earlier epoch)."""
        self.history.append(row)
        self.epoch = row["epoch"]
        if row["val_acc"] > self.best_acc:
            self.best_acc, self.best_epoch = row["val_acc"], row["epoch"]
            return True
        return False


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: torch.utils.data.DataLoader, device: torch.device, desc: str) -> EpochStats:
    set_train_mode(model)
    loss_sum, correct, seen = 0.0, 0, 0
    bar = _progress(loader, desc)
    for batch in bar:
        if batch is None:  # every image of this batch was unreadable
            continue
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        outputs = model(images)
        loss = criterion(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(f"the training loss became {value} in {desc}; try a lower --lr")
        loss_sum += value * len(targets)
        correct += int((outputs.argmax(1) == targets).sum())
        seen += len(targets)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}", refresh=False)
    return _stats(loss_sum, correct, seen, desc)


def refuse_divergence(model: nn.Module, train: EpochStats, val: EpochStats, epoch: int, files: "RunFiles") -> None:
    """TrainingError when the losses or the weights are no longer finite, before anything of this epoch is saved.

    A NaN model can still score chance accuracy and would be saved as the best; the checkpoints of
    the last good epoch are kept instead.
    """
    finite = math.isfinite(train.loss) and math.isfinite(val.loss) and all(
        bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
    if finite:
        return
    kept = (f"{files.best} and {files.last} hold the last good epoch" if files.last.exists()
            else "nothing was saved")
    raise TrainingError(f"training diverged in epoch {epoch} (the loss or the weights are no longer finite); "
                        f"try a lower --lr; {kept}")


def evaluate(model: nn.Module, criterion: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
             desc: str) -> EpochStats:
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for batch in _progress(loader, desc):
            if batch is None:
                continue
            images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
            outputs = model(images)
            loss_sum += criterion(outputs, targets).item() * len(targets)
            correct += int((outputs.argmax(1) == targets).sum())
            seen += len(targets)
    return _stats(loss_sum, correct, seen, desc)


def set_train_mode(model: nn.Module) -> None:
    """Training mode, except for BatchNorm layers whose weights are frozen: those keep their running
    statistics too, so a frozen block stays exactly the block it was."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def load_data(folders: ImageFolders, settings: Settings, device: torch.device
              ) -> Tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Loaders over the train and val samples; the train order is reseeded each epoch (see ``run``)."""
    side, resize = settings.image_size, resize_for(settings.image_size)
    train_set = ImageFiles(folders.train, train_transform(side=side, resize=resize, augment=settings.augment))
    val_set = ImageFiles(folders.val, eval_transform(side=side, resize=resize))
    common = dict(batch_size=settings.batch_size, num_workers=settings.workers, collate_fn=collate_readable,
                  pin_memory=device.type == "cuda", persistent_workers=settings.workers > 0)
    # A last batch of one image breaks BatchNorm where the feature map is 1x1: drop that one image.
    train_loader = torch.utils.data.DataLoader(train_set, shuffle=True, generator=torch.Generator(),
                                               drop_last=len(train_set) % settings.batch_size == 1, **common)
    val_loader = torch.utils.data.DataLoader(val_set, shuffle=False, **common)
    return train_loader, val_loader


def create_model(arch: Arch, num_classes: int, weights: str) -> Tuple[nn.Module, str]:
    """``arch`` with a fresh ``num_classes`` head over ``weights``' backbone; and where the weights came from."""
    model = build_model(arch.name, num_classes)
    if weights == "none":
        return model, "random initialisation"
    state, source = _initial_state(arch, weights)
    report = load_fitting_weights(model, state, arch, weights)
    head = (f"{arch.head}.weight", f"{arch.head}.bias")
    if any(k not in head for k in report.skipped + report.missing):
        log.warning("%s: %s", source, report.summary())
    return model, source


def freeze_layers(model: nn.Module, arch: Arch, mode: str, blocks: int) -> None:
    """``features``: everything but the head; ``blocks`` > 0: the first ``blocks`` blocks of the backbone."""
    if mode == "features":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(f"{arch.head}."))
    elif blocks:
        available = backbone_blocks(model, arch)
        if blocks > len(available):
            raise UsageError(f"--freeze {blocks}: {arch.name} has {len(available)} backbone blocks")
        for block in available[:blocks]:
            block.requires_grad_(False)


def run(args: argparse.Namespace) -> int:
    resumed = load_checkpoint(args.resume) if args.resume else None
    settings = resolve_settings(args, resumed)
    device = pick_device(settings.device)
    arch = get_arch(settings.arch)
    files = RunFiles.beside(Path(settings.out))
    _check_writable(files.best.parent)
    _refuse_overwriting_weights(files, settings.weights)

    folders = find_image_folders(Path(settings.data), val_fraction=settings.val_fraction, seed=settings.seed)
    if resumed is not None and folders.classes != list(resumed["classes"]):
        raise UsageError(f"the classes in {settings.data} are not the checkpoint's ("
                         f"{_class_difference(folders.classes, resumed['classes'])})")
    _report_skipped(folders)
    train_loader, val_loader = load_data(folders, settings, device)
    val_sample = spread_across_classes(folders.val, VERIFY_IMAGES)

    torch.manual_seed(settings.seed)
    if resumed is None:
        model, source = create_model(arch, len(folders.classes), settings.weights)
    else:
        model, source = build_model(arch.name, len(folders.classes)), f"checkpoint {args.resume}"
        _load_exactly(model, resumed["model"], args.resume)
    freeze_layers(model, arch, settings.mode, settings.freeze)
    _check_input_size(model, arch, settings.image_size)
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=settings.lr, momentum=settings.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.step_size, gamma=settings.gamma)
    progress = Progress()
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["lr_scheduler"])
        progress = Progress.from_checkpoint(resumed)
    if progress.epoch >= settings.epochs:
        print(f"edge-train: {args.resume} has already trained {progress.epoch} of {settings.epochs} epochs; "
              "pass --epochs N to train longer", file=sys.stderr)
        return EXIT_OK

    print(folders.describe())
    print(f"{arch.name} from {source}, {settings.image_size} px (resize {resize_for(settings.image_size)}), "
          f"mode {_mode_text(settings)}, {sum(p.numel() for p in trainable):,} trainable parameters, on {device}")
    print(_row(None))
    criterion = nn.CrossEntropyLoss()
    epoch = progress.epoch
    try:
        for epoch in range(progress.epoch + 1, settings.epochs + 1):
            # Reseeded per epoch, so a resumed run sees the same order and draws as an uninterrupted one.
            torch.manual_seed(settings.seed + epoch)
            train_loader.generator.manual_seed(settings.seed + epoch)
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            desc = f"epoch {epoch}/{settings.epochs}"
            train_stats = train_one_epoch(model, criterion, optimizer, train_loader, device, f"{desc} train")
            scheduler.step()
            val_stats = evaluate(model, criterion, val_loader, device, f"{desc} val")
            refuse_divergence(model, train_stats, val_stats, epoch, files)
            improved = progress.record(_history_row(epoch, lr, train_stats, val_stats, time.perf_counter() - started))
            ckpt = make_checkpoint(model, optimizer, scheduler, settings, folders, val_sample, progress)
            if improved:  # the best first: a "last" file never points at a best one not yet written
                save_checkpoint(ckpt, files.best)
                _write_grid(files.grid, model, val_sample, folders.classes, settings, device)
            save_checkpoint(ckpt, files.last)
            write_metrics(files.metrics, _metrics_summary(settings, folders, progress), progress.history)
            write_curves(files.curves, progress.history, progress.best_epoch)
            print(_row(progress.history[-1], improved), flush=True)
    except KeyboardInterrupt:
        where = f"resume with: edge-train --resume {files.last}" if files.last.exists() else "nothing saved"
        print(f"edge-train: interrupted in epoch {epoch}; {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    _print_summary(progress, files, args.resume)
    return EXIT_OK


def make_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, settings: Settings,
                    folders: ImageFolders, val_sample: Sequence[Tuple[Path, int]], progress: Progress
                    ) -> Dict[str, Any]:
    """The dict ``load_checkpoint`` reads back: plain types and tensors only."""
    from .. import __version__

    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": settings.arch,
        "classes": list(folders.classes),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "input_side": settings.image_size,
        "resize_side": resize_for(settings.image_size),
        "interpolation": DEFAULT_INTERPOLATION,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "epoch": progress.epoch,
        "best_acc": progress.best_acc,
        "best_epoch": progress.best_epoch,
        "history": [dict(row) for row in progress.history],
        "args": asdict(settings),
        "val_images": [str(path.resolve()) for path, _ in val_sample],
        "train_images": len(folders.train),
        "skipped_images": len(folders.skipped),
        "edge_classifier_version": __version__,
        "torch_version": str(torch.__version__),  # a TorchVersion would not load with weights_only
    }


def resolve_settings(args: argparse.Namespace, resumed: Optional[Mapping[str, Any]]) -> Settings:
    """Flags > the resumed checkpoint's settings > defaults; a resumed run may change only a few."""
    saved = dict(resumed.get("args") or {}) if resumed is not None else {}
    values: Dict[str, Any] = {}
    for name in (f.name for f in fields(Settings)):
        given = getattr(args, name)
        if name in saved and given is not None and name not in CHANGEABLE_ON_RESUME and given != saved[name]:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {given} differs from the resumed run's {saved[name]}; a resumed run keeps its "
                             f"settings (only {', '.join('--' + n.replace('_', '-') for n in CHANGEABLE_ON_RESUME)} "
                             "can change)")
        values[name] = given if given is not None else saved.get(name, DEFAULTS[name])
    for name in ("data", "out"):
        if values[name] is None:
            raise UsageError(f"--{name} is required (unless --resume gives it)")
    values["data"], values["out"] = str(Path(values["data"]).absolute()), str(Path(values["out"]).absolute())
    if Path(values["out"]).is_dir():
        raise UsageError(f"--out {values['out']} is a folder; name the checkpoint file (runs/photos.pt)")
    arch = get_arch(values["arch"])
    values["image_size"] = values["image_size"] or arch.input_side
    if values["mode"] == "features" and values["freeze"]:
        raise UsageError("--freeze goes with --mode finetune; --mode features freezes the whole backbone already")
    if values["weights"] == "none" and (values["mode"] == "features" or values["freeze"]) and resumed is None:
        log.warning("freezing randomly initialised layers: only the rest learns (did you mean --weights pretrained?)")
    return Settings(**values)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU")
    return torch.device(name)


def _initial_state(arch: Arch, weights: str) -> Tuple[Mapping[str, torch.Tensor], str]:
    if weights == "pretrained":
        enum = pretrained_weights(arch.name)
        try:
            return enum.get_state_dict(progress=sys.stderr.isatty(), check_hash=True), f"pretrained {enum}"
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a truncated download a RuntimeError
            raise pretrained_unavailable(arch.name, enum, exc) from None
    path = Path(weights)
    try:
        return load_checkpoint(path)["model"], f"checkpoint {path.name}"
    except CheckpointError:
        return read_state_dict(path), f"weights {path.name}"  # its own messages: missing, unsafe, not weights


def _load_exactly(model: nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the checkpoint's weights do not fit its architecture ({error_reason(exc)})") from None


def _check_input_size(model: nn.Module, arch: Arch, side: int) -> None:
    """One forward pass now, so a too small --image-size is a usage error, not a crash in epoch 1."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side))
    except RuntimeError as exc:
        raise UsageError(f"--image-size {side} is too small for {arch.name} ({error_reason(exc)})") from None


def _check_writable(folder: Path) -> None:
    """Fail now, not after the first epoch, when the checkpoint cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write into {folder}: {exc.strerror or exc}") from None


def _write_grid(path: Path, model: nn.Module, sample: Sequence[Tuple[Path, int]], classes: Sequence[str],
                settings: Settings, device: torch.device) -> None:
    """The sample's crops with the model's predictions (the model is left in eval mode)."""
    side, resize = settings.image_size, resize_for(settings.image_size)
    crop = eval_crop(side=side, resize=resize)
    to_input = to_normalised_tensor()
    crops, true = [], []
    for image_path, target in sample:
        try:
            crops.append(crop(open_rgb(image_path)))
            true.append(target)
        except Exception:  # unreadable: already counted by the loader
            continue
    if not crops:
        return
    model.eval()
    with torch.no_grad():
        predicted = model(torch.stack([to_input(c) for c in crops]).to(device)).argmax(1).tolist()
    write_val_grid(path, crops, predicted, true, classes)


def _history_row(epoch: int, lr: float, train: EpochStats, val: EpochStats, seconds: float) -> Dict[str, Any]:
    return {"epoch": epoch, "lr": lr, "train_loss": train.loss, "train_acc": train.acc, "val_loss": val.loss,
            "val_acc": val.acc, "val_correct": val.correct, "val_images": val.count, "train_images": train.count,
            "seconds": round(seconds, 3)}


def _metrics_summary(settings: Settings, folders: ImageFolders, progress: Progress) -> Dict[str, Any]:
    return {"arch": settings.arch, "classes": folders.classes, "input_side": settings.image_size,
            "resize_side": resize_for(settings.image_size), "best_epoch": progress.best_epoch,
            "best_val_acc": progress.best_acc,
            "skipped_images": [str(p) for p, _ in folders.skipped], "settings": asdict(settings)}


def _print_summary(progress: Progress, files: RunFiles, resumed_from: Optional[Path]) -> None:
    best = progress.history[progress.best_epoch - 1]
    print(f"best: epoch {progress.best_epoch}, val accuracy {progress.best_acc:.2%} "
          f"({best['val_correct']}/{best['val_images']})")
    if not files.best.exists():  # a resumed run with a new --out whose epochs never beat the old best
        log.warning("no epoch of this run beat the best val accuracy of epoch %d; the best model stays in %s",
                    progress.best_epoch, resumed_from)
    print(f"wrote {files.best} (best epoch), {files.last} (for --resume), {files.metrics.name}, "
          f"{files.curves.name}, {files.grid.name}")
    print(f"next: edge-export --checkpoint {files.best} --out {files.best.with_suffix('.onnx').name}")


def _class_difference(found: Sequence[str], saved: Sequence[str]) -> str:
    only_found, only_saved = sorted(set(found) - set(saved)), sorted(set(saved) - set(found))
    parts = [f"only in the folder: {', '.join(only_found[:5])}" if only_found else "",
             f"only in the checkpoint: {', '.join(only_saved[:5])}" if only_saved else ""]
    return "; ".join(p for p in parts if p) or "the same names in another order"


def _row(row: Optional[Mapping[str, Any]], best: bool = False) -> str:
    if row is None:
        return f"{'epoch':>5}  {'lr':>9}  {'train loss':>10}  {'train acc':>9}  {'val loss':>8}  {'val acc':>8}  {'time':>7}"
    return (f"{row['epoch']:>5}  {row['lr']:>9.3g}  {row['train_loss']:>10.4f}  {row['train_acc']:>9.2%}  "
            f"{row['val_loss']:>8.4f}  {row['val_acc']:>8.2%}  {row['seconds']:>6.1f}s" + ("  best" if best else ""))


def _mode_text(settings: Settings) -> str:
    if settings.mode == "finetune" and settings.freeze:
        return f"finetune, first {settings.freeze} backbone blocks frozen"
    return settings.mode


def _report_skipped(folders: ImageFolders) -> None:
    if folders.skipped:
        path, reason = folders.skipped[0]
        log.warning("skipped %d unreadable image(s) (first: %s: %s)", len(folders.skipped), path, reason)


def _stats(loss_sum: float, correct: int, seen: int, desc: str) -> EpochStats:
    if not seen:
        raise TrainingError(f"no image could be read in {desc}")
    return EpochStats(loss_sum / seen, correct / seen, correct, seen)


def _progress(loader, desc: str):
    from tqdm import tqdm

    # disable=None: a bar only when stderr is a terminal, not in logs and CI.
    return tqdm(loader, desc=desc, unit="batch", file=sys.stderr, leave=False, disable=None, dynamic_ncols=True)
