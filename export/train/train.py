"""The training run behind ``edge-train``: fine-tune a torchvision classifier on a folder of photos into a
checkpoint that exports in one step (the command's parser is in ``export.cli``).

    edge-train --data photos/ --epochs 25 --out runs/photos.pt
    edge-export --checkpoint runs/photos.pt --out photos.onnx
    edge-classify --model photos.onnx --image photos/val

The recipe is the PyTorch transfer-learning tutorial's: RandomResizedCrop + horizontal flip for training,
Resize + CenterCrop for validation (the transform edge.model.preprocess reproduces on the device), ImageNet
mean/std, SGD with momentum, StepLR. Beside ``--out runs/photos.pt`` it writes:

    runs/photos.pt            the best epoch by val accuracy (what edge-export takes)
    runs/photos.last.pt       the latest epoch (what --resume takes to go on)
    runs/photos.metrics.json  loss, accuracy, learning rate and time per epoch
    runs/photos.curves.png    loss and accuracy curves
    runs/photos.val.png       validation images with predicted and true labels, from the best epoch

Every file is written to a temporary name carrying the writer's process id and renamed, so an interrupted
run leaves whole files, and the next run removes what a ``kill -9`` left. A file of those names that
edge-train did not write is never replaced. ``--resume runs/photos.last.pt`` goes on writing
``runs/photos.pt`` (or the ``--out`` given): never a path read from the checkpoint. Exit codes: 0 done; 1
training failed (a write error, out of memory, a diverging loss); 2 usage error, data that cannot be
trained on, or a checkpoint that cannot be resumed; 130 interrupted (go on with ``--resume runs/photos.last.pt``).

``--init runs/deployed.pt`` (or the ``deployed.onnx`` exported from it) starts from a deployed model: its
architecture, input size, mean/std and classes, in their order, with the class folders new to it appended;
the backbone loaded exactly and the head matched row by row by label (``export.train.init_model``).

Scale. On CUDA, ``--amp`` is on by default (bf16 autocast where the GPU supports it, else fp16 with a
GradScaler) and the model runs channels_last; on the CPU both are off (``--amp`` there means bf16
autocast). Weights stay FP32, so checkpoints and exports are the same either way. Several processes:

    torchrun --nproc_per_node 4 -m export.train --data photos/ --out runs/photos.pt

trains with DistributedDataParallel (gloo on CPU, nccl on CUDA, one GPU per process). ``--batch-size`` is
per process, so the global batch is batch x processes, and the learning rate is scaled with it:
``--lr`` is the rate for one process's batch, and N processes train at N x --lr (linear scaling,
Goyal et al. 2017) unless ``--no-scale-lr``; the history's ``lr`` is the rate actually used. Only rank 0
prints and writes files; losses and accuracies are added up across ranks, validation covers each val
image exactly once (shards without padding). ``--sync-bn`` (CUDA) computes BatchNorm statistics over the
global batch. One process runs exactly as without torchrun.

Resume across world sizes. Checkpoints are written at the end of an epoch, so a run written by N
processes resumes on M: it stores epochs done, optimizer and scheduler state, the seed, the global step
and the world size. Epoch e's data order is one permutation drawn from (seed, e) by DistributedSampler,
the same for any number of processes; rank r takes positions r, r + M, ..., so global batch k is
positions k x B x M to (k + 1) x B x M - 1 of that permutation (the last one padded with repeats to a
multiple of M). With the same global batch (B x M) the batches are the very same images, whatever the
split into processes. The learning rate is recomputed for the new world size (StepLR's closed form of
the epochs done: --lr x scale x gamma ** (epoch // step)); SGD's momentum buffers do not depend on it.
Augmentation draws come from (seed, epoch, rank): they are reproduced on the same world size (with
``--workers 0`` or non-persistent workers), not across world sizes.

    code = run(build_train_parser().parse_args(["--data", "photos/", "--out", "runs/photos.pt"]))
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from contextlib import nullcontext
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
from .checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, SIDE_RANGE, VERIFY_IMAGES, CheckpointError,
                         check_resumable, load_checkpoint, save_checkpoint)
from .data import (ImageFiles, ImageFolders, collate_readable, eval_crop, eval_transform, find_image_folders,
                   open_rgb, resize_for, spread_across_classes, to_normalised_tensor, train_transform)
from .distributed import ShardSampler, World, default_workers
from .files import RunFiles, default_out_for_resume
from .init_model import InitModel, find_init, init_state, label_changes
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
    amp: Optional[bool]  # None: on for CUDA, off on the CPU
    sync_bn: bool
    scale_lr: bool
    mean: Tuple[float, ...]  # the normalisation: ImageNet's, or the --init or resumed model's
    std: Tuple[float, ...]


DEFAULTS: Dict[str, Any] = dict(
    data=None, out=None, arch="mobilenet_v2", weights="pretrained", mode="finetune", freeze=0, epochs=25,
    batch_size=32, lr=0.001, momentum=0.9, step_size=7, gamma=0.1, image_size=None, augment="default",
    val_fraction=0.2, seed=0, workers=None, device="auto", amp=None, sync_bn=False, scale_lr=True,
    mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD))
# A resumed run keeps the model, data split and optimiser it started with; only these may change.
CHANGEABLE_ON_RESUME = ("data", "out", "epochs", "batch_size", "workers", "device", "amp", "sync_bn", "scale_lr")
# This machine's and this command line's, never the checkpoint's: where to write, and how to run here.
NOT_FROM_CHECKPOINT = ("out", "workers", "device", "amp")


def _refuse_overwriting_weights(files: RunFiles, weights: str, what: str = "--weights file") -> None:
    """``--weights runs/a.pt --out runs/a.pt``: the run would replace the file it starts from after epoch 1."""
    source = Path(weights)
    if weights in ("pretrained", "none") or not source.is_file():
        return
    for written in (files.best, files.last):
        if written.exists() and written.samefile(source):
            raise UsageError(f"--out would overwrite the {what} {source} ({written.name}); choose another --out "
                             "(to go on from a run, use --resume)")


def _refuse_init_conflicts(args: argparse.Namespace) -> None:
    """``--init`` gives the weights and starts a new run: not with ``--weights`` or ``--resume``."""
    if args.init and args.resume:
        raise UsageError("--init starts a new run from a model and --resume goes on with a run (which records "
                         "where it started): pass one of them")
    if args.init and args.weights not in (None, DEFAULTS["weights"]):
        raise UsageError(f"--init gives the weights; drop --weights {args.weights}")


@dataclass(frozen=True)
class EpochStats:
    loss: float
    acc: float
    correct: int
    count: int
    steps: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: autocast to ``dtype`` (None: FP32), and the memory format. Weights stay FP32."""

    dtype: Optional[torch.dtype] = None
    channels_last: bool = False

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def scaler(self, device: torch.device) -> "torch.amp.GradScaler":
        """fp16 needs its gradients scaled (they underflow); bf16 has FP32's range and does not."""
        return torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)

    def describe(self) -> str:
        kind = {None: "FP32", torch.bfloat16: "AMP bf16", torch.float16: "AMP fp16"}[self.dtype]
        return kind + (", channels_last" if self.channels_last else "")


def pick_precision(amp: Optional[bool], device: torch.device) -> Precision:
    """``--amp``: default on for CUDA (bf16 where supported, else fp16), off on the CPU (bf16 there if asked)."""
    cuda = device.type == "cuda"
    if not (amp if amp is not None else cuda):
        return Precision(None, cuda)
    bf16 = not cuda or torch.cuda.is_bf16_supported()
    return Precision(torch.bfloat16 if bf16 else torch.float16, cuda)


@dataclass
class Progress:
    """Epochs done, the best one so far, the optimizer steps taken, and one row of metrics per epoch."""

    epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    global_step: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> "Progress":
        epoch = int(ckpt["epoch"])
        return cls(epoch, float(ckpt["best_acc"]), int(ckpt["best_epoch"]), int(ckpt.get("global_step", 0)),
                   [dict(row) for row in ckpt.get("history", [])][:epoch])

    def record(self, row: Dict[str, Any], steps: int) -> bool:
        """Add an epoch's row; whether it is the best so far (ties keep the earlier epoch)."""
        self.history.append(row)
        self.epoch = row["epoch"]
        self.global_step += steps
        if row["val_acc"] > self.best_acc:
            self.best_acc, self.best_epoch = row["val_acc"], row["epoch"]
            return True
        return False


@dataclass(frozen=True)
class Step:
    """What one optimizer step needs besides the batch."""

    model: nn.Module
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: "torch.amp.GradScaler"
    precision: Precision
    device: torch.device
    world: World


def train_one_epoch(step: Step, loader: torch.utils.data.DataLoader, desc: str) -> EpochStats:
    """One pass over this process's share of the train set; loss and accuracy added up across processes."""
    set_train_mode(step.model)
    started = time.perf_counter()
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0
    bar = _progress(loader, desc, step.world)
    for batch in bar:
        if batch is None:  # every image of this batch was unreadable
            if step.world.distributed:  # the other processes wait for this one's gradients: stop them all
                raise TrainingError(f"no image of a batch could be read in {desc}; remove the unreadable images")
            continue
        images, targets = _to_device(batch, step.device, step.precision)
        with step.precision.autocast(step.device):
            outputs = step.model(images)
            loss = step.criterion(outputs, targets)
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        step.scaler.step(step.optimizer)
        step.scaler.update()
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingError(f"the training loss became {value} in {desc}; try a lower --lr")
        loss_sum += value * len(targets)
        correct += int((outputs.argmax(1) == targets).sum())
        seen += len(targets)
        steps += 1
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}", refresh=False)
    loss_sum, correct, seen = step.world.sum([loss_sum, correct, seen], step.device)
    return _stats(loss_sum, int(correct), int(seen), desc, steps, time.perf_counter() - started)


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
             desc: str, world: World = World(), precision: Precision = Precision()) -> EpochStats:
    """Loss and accuracy over the val set: each process its shard (``model`` unwrapped, no collectives
    per batch, shards may differ by one image), then the sums added up, so each image counts once."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for batch in _progress(loader, desc, world):
            if batch is None:
                continue
            images, targets = _to_device(batch, device, precision)
            with precision.autocast(device):
                outputs = model(images)
            loss_sum += criterion(outputs.float(), targets).item() * len(targets)
            correct += int((outputs.argmax(1) == targets).sum())
            seen += len(targets)
    loss_sum, correct, seen = world.sum([loss_sum, correct, seen], device)
    return _stats(loss_sum, int(correct), int(seen), desc)


def _to_device(batch, device: torch.device, precision: Precision) -> Tuple[torch.Tensor, torch.Tensor]:
    images = batch[0].to(device, non_blocking=True)
    if precision.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch[1].to(device, non_blocking=True)


def set_train_mode(model: nn.Module) -> None:
    """Training mode, except for BatchNorm layers whose weights are frozen: those keep their running
    statistics too, so a frozen block stays exactly the block it was."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def load_data(folders: ImageFolders, settings: Settings, device: torch.device, world: World = World()
              ) -> Tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Loaders over this process's share of the train and val samples.

    The train order is DistributedSampler's permutation of (seed, epoch) (``set_epoch`` each epoch),
    the same for any number of processes; with one process it is the whole permutation.
    """
    side, resize = settings.image_size, resize_for(settings.image_size)
    norm = dict(mean=settings.mean, std=settings.std)
    train_set = ImageFiles(folders.train, train_transform(side=side, resize=resize, augment=settings.augment, **norm))
    val_set = ImageFiles(folders.val, eval_transform(side=side, resize=resize, **norm))
    cuda = device.type == "cuda"
    common = dict(batch_size=settings.batch_size, num_workers=settings.workers, collate_fn=collate_readable,
                  pin_memory=cuda, persistent_workers=cuda and settings.workers > 0)
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world.size, rank=world.rank, shuffle=True,
                                                  seed=settings.seed)
    # No last batch of one image: BatchNorm cannot train on it. Every process has as many batches (padding).
    train_loader = torch.utils.data.DataLoader(train_set, sampler=sampler, generator=torch.Generator(),
                                               drop_last=len(sampler) % settings.batch_size == 1, **common)
    val_loader = torch.utils.data.DataLoader(val_set, sampler=ShardSampler(len(val_set), world), **common)
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
    """The whole run, in this process (one of several under torchrun); an exit code."""
    world = World.from_env()
    if not world.is_main:
        logging.getLogger().setLevel(logging.ERROR)  # one voice: rank 0's
    _refuse_init_conflicts(args)
    resumed = load_checkpoint(Path(args.resume)) if args.resume else None
    init = find_init(Path(args.init)) if args.init else None
    settings = resolve_settings(args, resumed, world, init)
    if resumed is not None:
        check_resumable(resumed, Path(args.resume))
    files = RunFiles.beside(Path(settings.out))
    _check_writable(files.best.parent)
    _refuse_overwriting_weights(files, settings.weights, "--init checkpoint" if init else "--weights file")
    files.refuse_foreign()
    device = pick_device(settings.device)
    if settings.sync_bn and world.distributed and device.type != "cuda":
        raise UsageError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run on the CPU")
    device = world.start(device)
    try:
        return _train(args, settings, resumed, init, files, world, device)
    finally:
        world.stop()


def _train(args: argparse.Namespace, settings: Settings, resumed: Optional[Mapping[str, Any]],
           init: Optional[InitModel], files: RunFiles, world: World, device: torch.device) -> int:
    say = print if world.is_main else _silent
    arch = get_arch(settings.arch)
    if world.is_main:
        files.remove_stale_temporaries()
    start = resumed.get("init") if resumed is not None else (init.record() if init is not None else None)
    order = resumed["classes"] if resumed is not None else (init.classes if init is not None else None)
    folders = find_image_folders(Path(settings.data), val_fraction=settings.val_fraction, seed=settings.seed,
                                 class_order=order)
    if resumed is not None:
        _check_resumed_classes(folders, resumed, settings.data)
    if world.is_main:
        _report_skipped(folders)
        _report_missing(folders, start)
    train_loader, val_loader = load_data(folders, settings, device, world)
    val_sample = spread_across_classes(folders.val, VERIFY_IMAGES)
    precision = pick_precision(settings.amp, device)

    model, source = _initial_model(arch, folders.classes, settings, resumed, args.resume, init)
    model.to(device, memory_format=torch.channels_last if precision.channels_last else torch.preserve_format)
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr_scale = float(world.size) if settings.scale_lr else 1.0
    optimizer = torch.optim.SGD(trainable, lr=settings.lr * lr_scale, momentum=settings.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings.step_size, gamma=settings.gamma)
    scaler = precision.scaler(device)
    progress = Progress()
    if resumed is not None:
        progress = _restore(resumed, Path(args.resume), optimizer, scheduler, scaler, settings, lr_scale)
    if progress.epoch >= settings.epochs:
        if world.is_main:
            print(f"edge-train: {args.resume} has already trained {progress.epoch} of {settings.epochs} epochs; "
                  "pass --epochs N to train longer", file=sys.stderr)
        return EXIT_OK

    say(folders.describe())
    if init is not None:
        say(f"started from {init.describe()}; labels: {label_changes(folders.classes, init.classes, init.path.name)}")
    say(f"{arch.name} from {source}, {settings.image_size} px (resize {resize_for(settings.image_size)}), "
        f"mode {_mode_text(settings)}, {sum(p.numel() for p in trainable):,} trainable parameters, on {device}, "
        f"{precision.describe()}" + (f", {_world_text(settings, world, lr_scale)}" if world.distributed else ""))
    say(_row(None))
    criterion = nn.CrossEntropyLoss()
    step = Step(_wrap(model, settings, world, device), criterion, optimizer, scaler, precision, device, world)
    first, epoch, written = progress.epoch + 1, progress.epoch, set()
    try:
        for epoch in range(first, settings.epochs + 1):
            _seed_epoch(settings.seed, epoch, world, train_loader)
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            desc = f"epoch {epoch}/{settings.epochs}"
            train_stats = train_one_epoch(step, train_loader, f"{desc} train")
            scheduler.step()
            val_stats = evaluate(model, criterion, val_loader, device, f"{desc} val", world, precision)
            refuse_divergence(model, train_stats, val_stats, epoch, files)
            row = _history_row(epoch, lr, train_stats, val_stats, time.perf_counter() - started, world)
            improved = progress.record(row, train_stats.steps)
            if world.is_main:
                ckpt = make_checkpoint(model, optimizer, scheduler, settings, folders, val_sample, progress,
                                       world=world, lr_scale=lr_scale, scaler=scaler, init=start)
                written |= _save_epoch(ckpt, improved, files, model, val_sample, folders, settings, device, progress)
            say(_row(progress.history[-1], improved), flush=True)
    except KeyboardInterrupt:
        if world.is_main:
            where = f"resume with: edge-train --resume {files.last}" if files.last.exists() else "nothing saved"
            print(f"edge-train: interrupted in epoch {epoch}; {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if world.is_main:
        _print_summary(progress, files, written, first)
    return EXIT_OK


def _initial_model(arch: Arch, classes: Sequence[str], settings: Settings, resumed: Optional[Mapping[str, Any]],
                   resume: Optional[Path], init: Optional[InitModel] = None) -> Tuple[nn.Module, str]:
    """The model every process starts from (the same seed, so the same initialisation), frozen as asked."""
    torch.manual_seed(settings.seed)
    if resumed is not None:
        model, source = build_model(arch.name, len(classes)), f"checkpoint {resume}"
        _load_exactly(model, resumed["model"], resume)
    elif init is not None:
        model, source = build_model(arch.name, len(classes)), f"--init {init.path.name}, head rows by label"
        _load_exactly(model, init_state(model, arch, init, classes), init.path)
    else:
        model, source = create_model(arch, len(classes), settings.weights)
    freeze_layers(model, arch, settings.mode, settings.freeze)
    _check_input_size(model, arch, settings.image_size)
    return model, source


def _restore(resumed: Mapping[str, Any], path: Path, optimizer: torch.optim.Optimizer, scheduler: Any,
             scaler: "torch.amp.GradScaler", settings: Settings, lr_scale: float) -> Progress:
    """The optimizer, scheduler and progress of the resumed run; its learning rate for this world size."""
    try:
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["lr_scheduler"])
        if scaler.is_enabled() and resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's optimizer state does not fit its model "
                              f"({error_reason(exc)})") from None
    progress = Progress.from_checkpoint(resumed)
    saved_scale = resumed.get("lr_scale", 1.0)
    if saved_scale != lr_scale:
        set_learning_rate(optimizer, scheduler, settings.lr * lr_scale, settings, progress.epoch)
        log.info("learning rate rescaled from x%g (the resumed run's processes) to x%g", saved_scale, lr_scale)
    return progress


def set_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, base: float, settings: Settings,
                      epochs_done: int) -> None:
    """StepLR's closed form after ``epochs_done`` epochs from ``base``: what a run at this scale would have now."""
    for group in optimizer.param_groups:
        group["initial_lr"] = base
        group["lr"] = base * settings.gamma ** (epochs_done // settings.step_size)
    scheduler.base_lrs = [base for _ in optimizer.param_groups]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _wrap(model: nn.Module, settings: Settings, world: World, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` (SyncBatchNorm first with --sync-bn); ``model`` with one process."""
    if not world.distributed:
        if settings.sync_bn:
            log.info("--sync-bn: one process, nothing to synchronise")
        return model
    if settings.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


RANK_SEED_STRIDE = 1_000_003  # a rank's augmentation seeds, far from the other ranks' seed + epoch


def _seed_epoch(seed: int, epoch: int, world: World, loader: torch.utils.data.DataLoader) -> None:
    """The order from (seed, epoch), the same for any number of processes; augmentation from (seed, epoch, rank)."""
    loader.sampler.set_epoch(epoch)
    draws = seed + epoch + RANK_SEED_STRIDE * world.rank
    torch.manual_seed(draws)
    loader.generator.manual_seed(draws)


def _save_epoch(ckpt: Mapping[str, Any], improved: bool, files: RunFiles, model: nn.Module,
                val_sample: Sequence[Tuple[Path, int]], folders: ImageFolders, settings: Settings,
                device: torch.device, progress: Progress) -> set:
    """This epoch's files (rank 0 only); the paths written."""
    written = set()
    if improved:  # the best first: a "last" file never points at a best one not yet written
        save_checkpoint(ckpt, files.best)
        _write_grid(files.grid, model, val_sample, folders.classes, settings, device)
        written |= {files.best, files.grid}
    save_checkpoint(ckpt, files.last)
    write_metrics(files.metrics, _metrics_summary(settings, folders, progress), progress.history)
    write_curves(files.curves, progress.history, progress.best_epoch)
    return written | {files.last, files.metrics, files.curves}


def make_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, settings: Settings,
                    folders: ImageFolders, val_sample: Sequence[Tuple[Path, int]], progress: Progress, *,
                    world: World = World(), lr_scale: float = 1.0, scaler: Any = None,
                    init: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The dict ``load_checkpoint`` reads back: plain types and tensors only, the weights FP32 and contiguous.
    ``init``: where an ``--init`` run started (``InitModel.record``), kept by its resumed runs."""
    from .. import __version__

    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": settings.arch,
        "classes": list(folders.classes),
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "input_side": settings.image_size,
        "resize_side": resize_for(settings.image_size),
        "interpolation": DEFAULT_INTERPOLATION,
        "mean": list(settings.mean),
        "std": list(settings.std),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "epoch": progress.epoch,
        "global_step": progress.global_step,
        "world_size": world.size,
        "lr_scale": lr_scale,
        "global_batch": settings.batch_size * world.size,
        "best_acc": progress.best_acc,
        "best_epoch": progress.best_epoch,
        "history": [dict(row) for row in progress.history],
        "args": asdict(settings),
        "val_images": [str(path.resolve()) for path, _ in val_sample],
        "train_images": len(folders.train),
        "skipped_images": len(folders.skipped),
        "edge_classifier_version": __version__,
        "torch_version": str(torch.__version__),  # a TorchVersion would not load with weights_only
        **({"init": dict(init)} if init else {}),
    }


def resolve_settings(args: argparse.Namespace, resumed: Optional[Mapping[str, Any]], world: World = World(),
                     init: Optional[InitModel] = None) -> Settings:
    """Flags > the resumed checkpoint's settings (or the --init model's) > defaults; a resumed run may change
    only a few, and never takes its output path or how to run on this machine from the checkpoint; a run from
    --init keeps its model's architecture, input side and mean/std."""
    saved = _saved_settings(resumed, args.resume) if resumed is not None else {}
    if resumed is not None:  # checked by load_checkpoint; runs from before mean/std were settings lack them
        saved.update(mean=tuple(resumed["mean"]), std=tuple(resumed["std"]))
    inherited = init.settings() if init is not None else {}
    values: Dict[str, Any] = {}
    for name in (f.name for f in fields(Settings)):
        given = getattr(args, name, None)
        if name in inherited and given is not None and given != inherited[name]:
            raise UsageError(f"--{name.replace('_', '-')} {given} differs from the --init model's {inherited[name]}; "
                             "a run from --init keeps its model's architecture and input size")
        if name in saved and given is not None and name not in CHANGEABLE_ON_RESUME and given != saved[name]:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {given} differs from the resumed run's {saved[name]}; a resumed run keeps its "
                             f"settings (only {', '.join('--' + n.replace('_', '-') for n in CHANGEABLE_ON_RESUME)} "
                             "can change)")
        if given is not None:
            values[name] = given
        elif name in saved and name not in NOT_FROM_CHECKPOINT:
            values[name] = saved[name]
        else:
            values[name] = inherited.get(name, DEFAULTS[name])
    if init is not None:
        values["weights"] = str(init.path.absolute())  # what it starts from (--weights pretrained is all it allows)
    if values["out"] is None and args.resume:
        values["out"] = str(default_out_for_resume(Path(args.resume)))
    for name in ("data", "out"):
        if values[name] is None:
            raise UsageError(f"--{name} is required (unless --resume gives it)")
    values["data"], values["out"] = str(Path(values["data"]).absolute()), str(Path(values["out"]).absolute())
    if Path(values["out"]).is_dir():
        raise UsageError(f"--out {values['out']} is a folder; name the checkpoint file (runs/photos.pt)")
    arch = get_arch(values["arch"])
    values["image_size"] = values["image_size"] or arch.input_side
    if values["workers"] is None:
        values["workers"] = default_workers(world)
    if values["mode"] == "features" and values["freeze"]:
        raise UsageError("--freeze goes with --mode finetune; --mode features freezes the whole backbone already")
    if values["weights"] == "none" and (values["mode"] == "features" or values["freeze"]) and resumed is None:
        log.warning("freezing randomly initialised layers: only the rest learns (did you mean --weights pretrained?)")
    return Settings(**values)


# What a resumed checkpoint's settings must be; anything else is a broken or hostile file.
_SAVED_CHECKS = {
    "data": (str, "a path"), "arch": (str, "a name"), "weights": (str, "a name or path"),
    "mode": (("finetune", "features"), "finetune or features"), "augment": (("default", "none"), "default or none"),
    "freeze": ("int>=0", "a whole number >= 0"), "epochs": ("int>=1", "a whole number >= 1"),
    "batch_size": ("int>=1", "a whole number >= 1"), "step_size": ("int>=1", "a whole number >= 1"),
    "seed": ("int", "a whole number"), "image_size": ("side", "a whole number of pixels in {}..{}".format(*SIDE_RANGE)),
    "lr": ("float>0", "a number above 0"), "gamma": ("float>0", "a number above 0"),
    "momentum": ("float>=0", "a number >= 0"), "val_fraction": ("fraction", "a number between 0 and 1"),
    "sync_bn": (bool, "true or false"), "scale_lr": (bool, "true or false"),
}


def _saved_settings(resumed: Mapping[str, Any], path: Optional[Path]) -> Dict[str, Any]:
    """The resumed run's settings, each checked, so a hostile file is one line and not a crash in epoch 1."""
    saved = resumed.get("args") or {}
    for name, (kind, what) in _SAVED_CHECKS.items():
        if name in saved and saved[name] is not None and not _fits(saved[name], kind):
            raise CheckpointError(f"{path}: the checkpoint's args.{name} is not {what}")
    return dict(saved)


def _fits(value: Any, kind: Any) -> bool:
    integer = isinstance(value, int) and not isinstance(value, bool)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(kind, tuple):
        return value in kind
    if isinstance(kind, type):
        return type(value) is kind
    return {"int": integer, "int>=0": integer and value >= 0, "int>=1": integer and value >= 1,
            "side": integer and SIDE_RANGE[0] <= value <= SIDE_RANGE[1], "float>0": number and value > 0,
            "float>=0": number and value >= 0, "fraction": number and 0 < value < 1}[kind]


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
    to_input = to_normalised_tensor(mean=settings.mean, std=settings.std)
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


def _history_row(epoch: int, lr: float, train: EpochStats, val: EpochStats, seconds: float, world: World
                 ) -> Dict[str, Any]:
    return {"epoch": epoch, "lr": lr, "train_loss": train.loss, "train_acc": train.acc, "val_loss": val.loss,
            "val_acc": val.acc, "val_correct": val.correct, "val_images": val.count, "train_images": train.count,
            "seconds": round(seconds, 3), "train_seconds": round(train.seconds, 3), "processes": world.size}


def _metrics_summary(settings: Settings, folders: ImageFolders, progress: Progress) -> Dict[str, Any]:
    return {"arch": settings.arch, "classes": folders.classes, "input_side": settings.image_size,
            "resize_side": resize_for(settings.image_size), "best_epoch": progress.best_epoch,
            "best_val_acc": progress.best_acc,
            "skipped_images": [str(p) for p, _ in folders.skipped], "settings": asdict(settings)}


def _print_summary(progress: Progress, files: RunFiles, written: set, first: int) -> None:
    """What the run did, and only that: a best checkpoint is named as written only when this run wrote it."""
    best = progress.history[progress.best_epoch - 1]
    print(f"best: epoch {progress.best_epoch}, val accuracy {progress.best_acc:.2%} "
          f"({best['val_correct']}/{best['val_images']})")
    others = [f"{files.last} (for --resume)"] + [p.name for p in (files.metrics, files.curves, files.grid)
                                                  if p in written]
    if files.best in written:
        print(f"wrote {files.best} (best epoch), " + ", ".join(others))
        print(f"next: edge-export --checkpoint {files.best} --out {files.best.with_suffix('.onnx').name}")
        return
    epochs = f"epoch {first}" if first == progress.epoch else f"epochs {first}-{progress.epoch}"
    print(f"no epoch of this run ({epochs}) beat the val accuracy of epoch {progress.best_epoch}; "
          f"{files.best} was not written" + (" (it holds what an earlier run wrote)" if files.best.exists() else ""))
    print("wrote " + ", ".join(others))
    print(f"next: edge-export --checkpoint {files.last} --out {files.best.with_suffix('.onnx').name} "
          "(the latest epoch), or train on with --resume")


def _check_resumed_classes(folders: ImageFolders, resumed: Mapping[str, Any], data: str) -> None:
    """The resumed run's classes, in its order: a class may lack a folder only when its --init model had it."""
    may_miss = set((resumed.get("init") or {}).get("classes", ()))
    if folders.classes != list(resumed["classes"]) or not set(folders.missing) <= may_miss:
        found = [name for name in folders.classes if name not in folders.missing]
        raise UsageError(f"the classes in {data} are not the checkpoint's "
                         f"({_class_difference(found, resumed['classes'])})")


def _report_missing(folders: ImageFolders, start: Optional[Mapping[str, Any]]) -> None:
    if folders.missing and start:
        log.warning("no images of %s in %s: kept in the model from %s (their head rows copied), but training "
                    "without them makes the model name them less often", ", ".join(folders.missing), folders.root,
                    start["file"])


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


def _stats(loss_sum: float, correct: int, seen: int, desc: str, steps: int = 0, seconds: float = 0.0) -> EpochStats:
    if not seen:
        raise TrainingError(f"no image could be read in {desc}")
    return EpochStats(loss_sum / seen, correct / seen, correct, seen, steps, seconds)


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """``print`` for the ranks that are not rank 0."""


def _world_text(settings: Settings, world: World, lr_scale: float) -> str:
    return (f"{world.size} processes, global batch {settings.batch_size * world.size}, "
            f"lr {settings.lr:g} x {lr_scale:g}" + (", SyncBatchNorm" if settings.sync_bn else ""))


def _progress(loader, desc: str, world: World = World()):
    from tqdm import tqdm

    # disable=None: a bar only when stderr is a terminal, not in logs and CI; rank 0's only.
    return tqdm(loader, desc=desc, unit="batch", file=sys.stderr, leave=False, disable=None if world.is_main else True,
                dynamic_ncols=True)
