"""Fine-tune any ``metalayers_*`` model (or any timm model) on an image-classification dataset.

Run it with no arguments and it trains ``metalayers_resnet18`` on the handwritten digits that ship
inside scikit-learn (``sklearn.datasets.load_digits``: 1797 grayscale 8x8 images, nothing to download),
upsampled to 32x32, and prints the validation top-1 of a held-out split (20%, stratified, seed 0)::

    python -m timm_metalayers.finetune                 # or: python examples/finetune.py

Your own images: ``train/`` and ``val/`` folders with one sub-folder per class::

    python -m timm_metalayers.finetune --data-dir data/ --model metalayers_resnet50.a1_in1k --pretrained \\
        --epochs 10 --layer-decay 0.75 --ema --amp --output runs/r50

More than one process (CPUs with ``gloo``, GPUs with ``nccl``), one machine or several::

    torchrun --nproc_per_node=2 -m timm_metalayers.finetune --data-dir data/ --output runs/r50
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --master_addr=10.0.0.1 --master_port=29500 \\
        -m timm_metalayers.finetune --data-dir /shared/data --output /shared/runs/r50

Interrupted? Run the same command with ``--resume``: it continues from the last checkpoint and, with
the same seed, ends with the same metrics as a run that was never interrupted.

What it writes under ``--output``:

* ``checkpoint.json`` - the run state (epoch, best metric, history, arguments); it is replaced
  atomically after the files it points at are complete, so it always names a whole checkpoint;
* ``checkpoint-epochNNNN/`` - ``model.safetensors``, ``ema.safetensors`` (with ``--ema``) and
  ``train_state.pt`` (optimizer, scheduler, grad scaler and RNG states; tensors and plain containers
  only, read back with ``torch.load(weights_only=True)``); the folder is renamed into place whole;
* ``hub/`` - at the end, :func:`timm_metalayers.hub.save_for_hub`'s publishable folder:
  ``model.safetensors``, ``config.json`` (with the class names) and a ``README.md`` model card with
  the measured validation accuracy.

Wrong input (a missing or empty data folder, a class folder without images, an unknown model, a
checkpoint of another architecture, ``--resume`` with nothing to resume, ...) ends with a one-line
``error: ...`` on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import inspect
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

import timm
from timm.data import create_dataset, create_transform, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from . import models as _models  # noqa: F401  (registers the metalayers_* models with timm)
from .state_dict import CheckpointMismatchError, check_state_dict

__all__ = ['FinetuneError', 'build_parser', 'parse_args', 'run', 'main', 'DEFAULT_MODEL']

DEFAULT_MODEL = 'metalayers_resnet18'
CHECKPOINT_JSON = 'checkpoint.json'
CHECKPOINT_PREFIX = 'checkpoint-epoch'
STATE_FORMAT = 'timm_metalayers.finetune/1'

# Defaults that depend on the data: (embedded digits, a folder dataset).
_MODE_DEFAULTS = {
    'epochs': (10, 10),
    'batch_size': (64, 32),
    'lr': (2e-3, 5e-4),
    'img_size': (32, None),   # None: the model's pretrained_cfg input size
    'workers': (0, min(4, os.cpu_count() or 1)),
}


class FinetuneError(Exception):
    """A problem with the user's input; reported as one line on stderr, exit status 2."""


# ------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_metalayers.finetune',
        description='Fine-tune a metalayers_* timm model. With no arguments: metalayers_resnet18 on the digits '
                    'images inside scikit-learn (no download), to >= 97%% validation top-1 in a few minutes on CPU.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = p.add_argument_group('data')
    d.add_argument('--data-dir', default=None,
                   help='folder with train/ and val/ class sub-folders (default: the embedded digits)')
    d.add_argument('--img-size', type=int, default=None,
                   help="input size (default: 32 for digits, else the model's pretrained_cfg input size)")
    d.add_argument('--in-chans', type=int, default=None, help='input channels (default: 1 for digits, 3 for folders)')
    d.add_argument('--num-classes', type=int, default=None,
                   help='number of classes (default: from the data; an error if it disagrees with the data)')
    d.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability (folder data)')
    d.add_argument('--scale', type=float, nargs=2, default=(0.08, 1.0), metavar=('MIN', 'MAX'),
                   help='random-resized-crop area range (folder data)')
    d.add_argument('--aa', default=None, help="timm auto-augment policy, e.g. 'rand-m9-mstd0.5' (folder data)")
    d.add_argument('--workers', type=int, default=None, help='data loader worker processes per rank')
    d.add_argument('--train-subset', type=int, default=None, help='use only N training images (quick checks)')

    m = p.add_argument_group('model')
    m.add_argument('--model', default=DEFAULT_MODEL, help='timm model name, e.g. metalayers_resnet50.a1_in1k')
    m.add_argument('--pretrained', action='store_true',
                   help="start from the model's timm Hub weights (through this package's checkpoint filters)")
    m.add_argument('--pretrained-file', default=None,
                   help='start from a local pretrained .safetensors file (as --pretrained, the classifier is '
                        'replaced when the number of classes differs)')
    m.add_argument('--initial-checkpoint', default=None,
                   help='load these exact weights (a .safetensors file or a save_for_hub folder) before training')
    m.add_argument('--drop-rate', type=float, default=0.0, help='dropout before the classifier')
    m.add_argument('--drop-path-rate', type=float, default=0.0, help='stochastic depth rate (linear_scheduler)')
    m.add_argument('--drop-block-rate', type=float, default=0.0, help='DropBlock rate in the later stages')
    m.add_argument('--freeze-backbone', action='store_true',
                   help='linear probe: train only the classifier; the backbone runs in eval mode')

    o = p.add_argument_group('optimization')
    o.add_argument('--epochs', type=int, default=None, help='epochs (default: 10)')
    o.add_argument('--batch-size', type=int, default=None, help='batch size per process (default: 64 / 32)')
    o.add_argument('--opt', default='adamw', help="timm optimizer name ('adamw', 'sgd', 'lamb', ...)")
    o.add_argument('--lr', type=float, default=None, help='peak learning rate (default: 2e-3 digits, 5e-4 folders)')
    o.add_argument('--weight-decay', type=float, default=0.05)
    o.add_argument('--momentum', type=float, default=0.9, help='momentum (SGD-like optimizers)')
    o.add_argument('--layer-decay', type=float, default=None,
                   help="layer-wise lr decay (timm's create_optimizer_v2 with the model's group_matcher)")
    o.add_argument('--warmup-epochs', type=float, default=1.0, help='linear warmup before the cosine decay')
    o.add_argument('--warmup-lr', type=float, default=1e-5)
    o.add_argument('--min-lr', type=float, default=1e-6)
    o.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    o.add_argument('--clip-grad', type=float, default=None, help='clip the gradient norm to this value')
    o.add_argument('--amp', action='store_true',
                   help='mixed precision: bfloat16 autocast on CPU, float16 (with a GradScaler) on CUDA')
    o.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default=None,
                   help='autocast dtype (default: bfloat16 on CPU, float16 on CUDA)')
    o.add_argument('--ema', action='store_true', help="keep an EMA of the weights (timm's ModelEmaV3); it is exported")
    o.add_argument('--ema-decay', type=float, default=0.998, help='EMA decay (reached after a warmup)')
    o.add_argument('--seed', type=int, default=0)

    r = p.add_argument_group('run')
    r.add_argument('--output', default=None, help='run folder (default: runs/<model>-<data>)')
    r.add_argument('--resume', nargs='?', const='', default=None, metavar='PATH',
                   help='continue from the checkpoint in --output (or in PATH: a run folder or its checkpoint.json)')
    r.add_argument('--stop-after', type=int, default=None, metavar='N',
                   help='stop after N epochs of this invocation (the schedule still spans --epochs); '
                        'continue later with --resume')
    r.add_argument('--log-csv', default=None, metavar='PATH', help='write per-epoch metrics to this CSV file')
    r.add_argument('--export-dir', default=None, help='save_for_hub folder (default: <output>/hub)')
    r.add_argument('--no-export', action='store_true', help='skip the save_for_hub export at the end')
    r.add_argument('--repo-id', default=None, help='Hub repo the export is meant for (used in the printed line)')
    r.add_argument('--device', default=None, help="'cpu', 'cuda', 'cuda:1' (default: cuda if available)")
    r.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='tqdm progress bars (default: when stderr is a terminal)')
    r.add_argument('--rank-log-dir', default=None, help=argparse.SUPPRESS)  # tests: every rank writes its metrics
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    args = argparse.Namespace(**vars(args))
    i = 0 if args.data_dir is None else 1
    for key, values in _MODE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, values[i])
    if args.in_chans is None:
        args.in_chans = 1 if args.data_dir is None else 3
    if args.output is None:
        data = 'digits' if args.data_dir is None else Path(args.data_dir).resolve().name or 'data'
        args.output = os.path.join('runs', f'{args.model.split(".")[0]}-{data}')
    if args.export_dir is None:
        args.export_dir = os.path.join(args.output, 'hub')
    for name in ('epochs', 'batch_size'):
        if getattr(args, name) < 1:
            raise FinetuneError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(args, name)}')
    if args.stop_after is not None and args.stop_after < 1:
        raise FinetuneError(f'--stop-after must be at least 1, got {args.stop_after}')
    if args.in_chans not in (1, 3):
        raise FinetuneError(f'--in-chans must be 1 (grayscale) or 3 (RGB), got {args.in_chans}')
    if args.img_size is not None and args.img_size < 8:
        raise FinetuneError(f'--img-size must be at least 8, got {args.img_size}')
    if args.lr <= 0:
        raise FinetuneError(f'--lr must be positive, got {args.lr}')
    if args.layer_decay is not None and not 0 < args.layer_decay <= 1:
        raise FinetuneError(f'--layer-decay must be in (0, 1], got {args.layer_decay}')
    for name in ('drop_rate', 'drop_path_rate', 'drop_block_rate'):
        if not 0 <= getattr(args, name) < 1:
            raise FinetuneError(f'--{name.replace("_", "-")} must be in [0, 1), got {getattr(args, name)}')
    if args.pretrained_file and args.initial_checkpoint:
        raise FinetuneError('give either --pretrained-file or --initial-checkpoint, not both')
    if args.train_subset is not None and args.train_subset < 1:
        raise FinetuneError(f'--train-subset must be at least 1, got {args.train_subset}')
    return args


# ------------------------------------------------------------------------------------------------
# Processes and devices
# ------------------------------------------------------------------------------------------------
@dataclass
class DistState:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_rank() -> int:
    try:
        return int(os.environ.get('RANK', '0'))
    except ValueError:
        return 0


def _setup_distributed(device_arg: Optional[str]) -> DistState:
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if device_arg is None:
        device_arg = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(device_arg)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise FinetuneError(f'--device {device_arg}: CUDA is not available on this machine')
        if device.index is None:
            device = torch.device('cuda', local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    state = DistState(rank=rank, local_rank=local_rank, world_size=world_size, device=device)
    if world_size > 1:
        if not dist.is_available():
            raise FinetuneError('WORLD_SIZE > 1 but this PyTorch build has no torch.distributed')
        if not dist.is_initialized():
            backend = 'nccl' if device.type == 'cuda' else 'gloo'
            kwargs = {}
            if device.type == 'cuda' and 'device_id' in inspect.signature(dist.init_process_group).parameters:
                kwargs['device_id'] = device
            dist.init_process_group(backend=backend, **kwargs)
            state.initialized_here = True
    return state


def _all_reduce_sum(values: Sequence[float], ds: DistState) -> List[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                     device=ds.device if ds.device.type == 'cuda' else 'cpu')
    if ds.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _broadcast_ok(ok: bool, ds: DistState) -> bool:
    """True when every rank says ok (so every rank takes the same branch)."""
    if not ds.distributed:
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=ds.device if ds.device.type == 'cuda' else 'cpu')
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() == 0


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every RNG from (seed, epoch, rank), so an epoch's data order and augmentation never depend on
    what ran before it - which is what makes a resumed run identical to an uninterrupted one."""
    s = (seed * 1_000_003 + epoch * 1009 + rank) % (2 ** 31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits, upsampled once to ``img_size``; random affine jitter when training."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, img_size: int, in_chans: int,
                 mean: Sequence[float], std: Sequence[float], train: bool):
        x = F.interpolate(images.unsqueeze(1), size=(img_size, img_size), mode='bilinear', align_corners=False)
        self.images = x.clamp_(0, 1).repeat(1, in_chans, 1, 1).contiguous()
        self.labels = labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.train = train
        if train:
            from torchvision.transforms import v2
            self.augment = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.train:
            x = self.augment(x)
        return (x - self.mean) / self.std, int(self.labels[i])


@dataclass
class Data:
    train: Dataset
    val: Dataset
    class_names: List[str]
    data_config: Dict[str, Any]
    description: str
    dataset_tag: Optional[str]


def _single_channel(cfg: Dict[str, Any], in_chans: int) -> Dict[str, Any]:
    cfg = dict(cfg)
    cfg['input_size'] = (in_chans, *tuple(cfg['input_size'])[1:])
    for key in ('mean', 'std'):
        v = tuple(float(x) for x in cfg[key])
        if len(v) != in_chans:
            v = (sum(v) / len(v),) * in_chans
        cfg[key] = v
    return cfg


def _data_config(args: argparse.Namespace, model: nn.Module) -> Dict[str, Any]:
    overrides: Dict[str, Any] = {'in_chans': args.in_chans}
    if args.img_size is not None:
        overrides['img_size'] = args.img_size
    cfg = resolve_data_config(overrides, model=model)
    return _single_channel(cfg, args.in_chans)


def _load_digits(args: argparse.Namespace, data_config: Dict[str, Any]) -> Data:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise FinetuneError('the embedded digits need scikit-learn: pip install -e ".[examples]" '
                            '(or pass --data-dir with your own train/ and val/ folders)') from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=0.2, random_state=0, stratify=digits.target)
    train_idx = np.sort(train_idx)
    if args.train_subset is not None:
        train_idx = train_idx[:args.train_subset]
    size = data_config['input_size'][-1]
    mean, std = data_config['mean'], data_config['std']
    train = DigitsDataset(images[train_idx], labels[train_idx], size, args.in_chans, mean, std, train=True)
    val = DigitsDataset(images[val_idx], labels[val_idx], size, args.in_chans, mean, std, train=False)
    return Data(train, val, [str(i) for i in range(10)], data_config,
                f"scikit-learn's digits (load_digits: {len(train_idx)} training / {len(val_idx)} validation "
                f"images, 8x8 upsampled to {size}x{size})", None)


def _image_extensions() -> Tuple[str, ...]:
    try:
        from timm.data.readers.img_extensions import get_img_extensions
        return tuple(e.lower() for e in get_img_extensions(as_set=True))
    except ImportError:  # older timm
        return ('.png', '.jpg', '.jpeg')


def _scan_split(root: Path, split: str) -> Dict[str, int]:
    """{class name: number of images} of ``root/split``, with one-line errors for every bad layout."""
    folder = root / split
    exts = _image_extensions()
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not classes:
        raise FinetuneError(f'{folder} has no class folders (expected {folder}/<class>/<image files>)')
    counts = {}
    for c in classes:
        n = sum(1 for f in c.rglob('*') if f.is_file() and f.suffix.lower() in exts)
        if n == 0:
            raise FinetuneError(f'class folder {c} has no images ({", ".join(sorted(exts)[:6])}, ...)')
        counts[c.name] = n
    return counts


def _folder_classes(args: argparse.Namespace) -> List[str]:
    """Check the layout of ``--data-dir`` and return its class names (the train/ sub-folders, sorted)."""
    root = Path(args.data_dir)
    if not root.exists():
        raise FinetuneError(f'--data-dir {root} does not exist')
    if not root.is_dir():
        raise FinetuneError(f'--data-dir {root} is not a folder')
    if not any(root.iterdir()):
        raise FinetuneError(f'--data-dir {root} is empty (expected train/ and val/ class folders)')
    for split in ('train', 'val'):
        if not (root / split).is_dir():
            raise FinetuneError(f'--data-dir {root}: no {split}/ folder (expected {root}/train/<class>/<images> '
                                f'and {root}/val/<class>/<images>)')
    train_counts = _scan_split(root, 'train')
    val_counts = _scan_split(root, 'val')
    unknown = sorted(set(val_counts) - set(train_counts))
    if unknown:
        raise FinetuneError(f'{root}/val has classes that train/ lacks: {", ".join(unknown[:5])}')
    return sorted(train_counts)


def _load_folders(args: argparse.Namespace, data_config: Dict[str, Any], class_names: List[str]) -> Data:
    root = Path(args.data_dir)
    class_map = {c: i for i, c in enumerate(class_names)}
    img_mode = 'L' if args.in_chans == 1 else 'RGB'
    train = create_dataset('', root=str(root / 'train'), split='train', is_training=True, class_map=class_map,
                           input_img_mode=img_mode)
    val = create_dataset('', root=str(root / 'val'), split='val', class_map=class_map, input_img_mode=img_mode)
    cfg = {k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
           if k in data_config}
    train.transform = create_transform(**{k: v for k, v in cfg.items() if k not in ('crop_pct', 'crop_mode')},
                                       is_training=True, hflip=args.hflip, scale=tuple(args.scale),
                                       auto_augment=args.aa)
    val.transform = create_transform(**cfg, is_training=False)
    if args.train_subset is not None:
        train = torch.utils.data.Subset(train, range(min(args.train_subset, len(train))))
    return Data(train, val, class_names, data_config,
                f'{root.resolve().name} ({len(train)} training / {len(val)} validation images, '
                f'{len(class_names)} classes)', None)


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``: each sample evaluated exactly once across ranks."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------
def _check_model_name(name: str) -> None:
    base, _, tag = name.partition('.')
    if timm.is_model(base):
        if tag and name not in timm.list_pretrained(base + '.*'):
            tags = [n.partition('.')[2] for n in timm.list_pretrained(base + '.*')]
            raise FinetuneError(f"model {name!r}: unknown pretrained tag {tag!r}; {base} has "
                                f"{', '.join(tags) or 'none'}")
        return
    close = difflib.get_close_matches(base, timm.list_models('metalayers_*') or timm.list_models(), n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    raise FinetuneError(f"unknown model {name!r}{hint} (see timm.list_models('metalayers_*'))")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:600]


def _create_model(args: argparse.Namespace, num_classes: int) -> nn.Module:
    _check_model_name(args.model)
    kwargs: Dict[str, Any] = dict(num_classes=num_classes, in_chans=args.in_chans)
    for name in ('drop_rate', 'drop_path_rate', 'drop_block_rate'):
        if getattr(args, name):
            kwargs[name] = getattr(args, name)
    pretrained = bool(args.pretrained or args.pretrained_file)
    if args.pretrained_file:
        path = Path(args.pretrained_file)
        if not path.is_file():
            raise FinetuneError(f'--pretrained-file {path} does not exist')
        kwargs['pretrained_cfg_overlay'] = dict(file=str(path))
    try:
        model = timm.create_model(args.model, pretrained=pretrained, **kwargs)
    except TypeError as e:
        raise FinetuneError(f'{args.model} does not accept these options: {_first_line(e)}') from e
    except (FileNotFoundError, ConnectionError) as e:
        raise FinetuneError(f'could not get the pretrained weights of {args.model}: {_first_line(e)}') from e
    except Exception as e:  # checkpoint filters raise ValueError/RuntimeError naming the keys
        if pretrained:
            src = args.pretrained_file or f"{args.model}'s Hub weights"
            raise FinetuneError(f'cannot load {src} into {args.model}: {_first_line(e)}') from e
        raise
    if args.initial_checkpoint:
        path = Path(args.initial_checkpoint)
        if not path.exists():
            raise FinetuneError(f'--initial-checkpoint {path} does not exist')
        try:
            from .hub import load_weights  # every key and shape checked; timm-named checkpoints filtered
        except ImportError:  # pragma: no cover
            _load_safetensors_into(model, path / 'model.safetensors' if path.is_dir() else path, '--initial-checkpoint')
        else:
            try:
                load_weights(model, path)
            except (ValueError, RuntimeError, OSError) as e:  # hub.HubLoadError derives from RuntimeError
                raise FinetuneError(f'cannot load --initial-checkpoint {path} into {args.model}: '
                                    f'{_first_line(e)}') from e
    return model


def _freeze_backbone(model: nn.Module) -> List[str]:
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Module) or not any(True for _ in classifier.parameters()):
        raise FinetuneError(f'--freeze-backbone: {type(model).__name__} has no classifier with parameters')
    for p in model.parameters():
        p.requires_grad_(False)
    for p in classifier.parameters():
        p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _set_train_mode(model: nn.Module, freeze_backbone: bool) -> None:
    if not freeze_backbone:
        model.train()
        return
    model.eval()  # frozen backbone: fixed BatchNorm statistics, no stochastic depth / DropBlock
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()  # --drop-rate still regularises the probe


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file next to ``path``, fsync it, and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the file private
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode('utf-8'))


def _state_dict_for_safetensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to('cpu').contiguous().clone() for k, v in module.state_dict().items()}


def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'name': np_state[0], 'keys': torch.from_numpy(np_state[1].astype(np.int64)),
                  'pos': int(np_state[2]), 'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
        'python': random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    n = state['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    if 'cuda' in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(state['cuda'])


def _save_checkpoint(out: Path, epoch: int, model: nn.Module, ema: Optional[ModelEmaV3], optimizer, scheduler,
                     scaler, run_state: Dict[str, Any]) -> Path:
    """Write ``checkpoint-epochNNNN/`` whole (temp folder + rename), then ``checkpoint.json`` (temp file +
    rename) pointing at it, then drop older checkpoint folders. An interruption at any point leaves the
    previous complete checkpoint in place."""
    import safetensors.torch

    out.mkdir(parents=True, exist_ok=True)
    name = f'{CHECKPOINT_PREFIX}{epoch:04d}'
    final = out / name
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f'.{name}.', suffix='.tmp'))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        meta = {'format': STATE_FORMAT, 'model': run_state['model'], 'epoch': str(epoch)}
        safetensors.torch.save_file(_state_dict_for_safetensors(model), str(tmp / 'model.safetensors'), metadata=meta)
        if ema is not None:
            safetensors.torch.save_file(_state_dict_for_safetensors(ema.module), str(tmp / 'ema.safetensors'),
                                        metadata=meta)
        train_state = {'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                       'scaler': scaler.state_dict() if scaler is not None else None, 'rng': _rng_state(),
                       'epoch': epoch}
        torch.save(train_state, str(tmp / 'train_state.pt'))
        for f in tmp.iterdir():
            with open(f, 'rb') as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a stale folder of the same epoch from an earlier run: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    state = dict(run_state, epoch=epoch, checkpoint=name,
                 files=['model.safetensors'] + (['ema.safetensors'] if ema is not None else []) + ['train_state.pt'])
    _atomic_write_json(out / CHECKPOINT_JSON, state)
    for old in out.glob(f'{CHECKPOINT_PREFIX}*'):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    for stale in out.glob(f'.{CHECKPOINT_PREFIX}*.tmp'):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _find_checkpoint(resume: str, output: str) -> Path:
    target = Path(resume or output)
    path = target if target.name.endswith('.json') else target / CHECKPOINT_JSON
    if not path.is_file():
        where = f'--resume {resume}' if resume else f'--output {output}'
        raise FinetuneError(f'nothing to resume: {where} has no {CHECKPOINT_JSON} (no finished epoch yet?)')
    return path


def _read_checkpoint(path: Path) -> Dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise FinetuneError(f'cannot read {path}: {_first_line(e)}') from e
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise FinetuneError(f'{path} is not a checkpoint of timm_metalayers.finetune')
    folder = path.parent / state.get('checkpoint', '')
    missing = [f for f in state.get('files', []) if not (folder / f).is_file()]
    if not state.get('checkpoint') or missing:
        raise FinetuneError(f'{path} points at {folder}, which lacks {", ".join(missing) or "its files"}')
    state['_folder'] = str(folder)
    return state


def _load_safetensors_into(module: nn.Module, path: Path, what: str) -> None:
    import safetensors.torch

    try:
        sd = safetensors.torch.load_file(str(path), device='cpu')
    except Exception as e:
        raise FinetuneError(f'cannot read {path}: {_first_line(e)}') from e
    try:
        check_state_dict(sd, module, source=f'{what} {path}')
    except CheckpointMismatchError as e:
        raise FinetuneError(str(e)) from e
    module.load_state_dict(sd, strict=True)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, iterable, **kwargs):
        if not self.enabled:
            return iterable
        from tqdm.auto import tqdm
        return tqdm(iterable, leave=False, dynamic_ncols=True, mininterval=0.5, file=sys.stderr, **kwargs)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _train_one_epoch(model, ema, loader, optimizer, scheduler, scaler, criterion, ds: DistState, args, epoch: int,
                     global_step: int, amp_dtype, progress: _Progress, updates_per_epoch: int):
    _set_train_mode(model, args.freeze_backbone)
    loss_sum = correct = count = 0.0
    t0 = time.perf_counter()
    bar = progress.bar(loader, desc=f'train {epoch + 1}/{args.epochs}', total=len(loader), unit='batch')
    for x, y in bar:
        x = x.to(ds.device, non_blocking=True)
        y = y.to(ds.device, non_blocking=True)
        with _autocast(ds.device, amp_dtype):
            logits = model(x)
            loss = criterion(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if args.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if args.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
        global_step += 1
        scheduler.step_update(num_updates=global_step)
        if ema is not None:
            ema.update(_unwrap(model), step=global_step)
        n = y.shape[0]
        loss_sum += loss.detach().float().item() * n
        correct += (logits.detach().argmax(-1) == y).sum().item()
        count += n
        if progress.enabled:
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(loss=f'{loss_sum / count:.3f}', acc=f'{100 * correct / count:.1f}%',
                            img_s=f'{count * ds.world_size / elapsed:.0f}', refresh=False)
    elapsed = time.perf_counter() - t0
    loss_sum, correct, count = _all_reduce_sum([loss_sum, correct, count], ds)
    scheduler.step(epoch + 1)
    return {'train_loss': loss_sum / max(count, 1), 'train_top1': 100 * correct / max(count, 1),
            'train_images': int(count), 'img_per_s': count / max(elapsed, 1e-9), 'epoch_time_s': elapsed}, global_step


@torch.no_grad()
def _evaluate(model: nn.Module, loader, ds: DistState, amp_dtype, progress: _Progress, desc: str) -> Dict[str, float]:
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for x, y in progress.bar(loader, desc=desc, total=len(loader), unit='batch'):
        x = x.to(ds.device, non_blocking=True)
        y = y.to(ds.device, non_blocking=True)
        with _autocast(ds.device, amp_dtype):
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction='sum').item()
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices
        correct1 += (topk[:, 0] == y).sum().item()
        correct5 += (topk == y[:, None]).any(-1).sum().item()
        count += y.shape[0]
    loss_sum, correct1, correct5, count = _all_reduce_sum([loss_sum, correct1, correct5, count], ds)
    return {'loss': loss_sum / max(count, 1), 'top1': 100 * correct1 / max(count, 1),
            'top5': 100 * correct5 / max(count, 1), 'images': int(count)}


def _write_csv(path: Path, history: List[Dict[str, Any]]) -> None:
    if not history:
        return
    keys: List[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator='\n')
    w.writeheader()
    for row in history:
        w.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})
    _atomic_write_bytes(path, buf.getvalue().encode('utf-8'))


def _summary_line(row: Dict[str, Any], epochs: int) -> str:
    line = (f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_top1']:.2f}%  val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f}%")
    if 'ema_val_top1' in row:
        line += f"  ema top1 {row['ema_val_top1']:.2f}%"
    line += f"  lr {row['lr']:.2e}  {row['img_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s"
    return line


_RUN_SETTINGS = ('data_dir', 'img_size', 'batch_size', 'epochs', 'opt', 'lr', 'weight_decay', 'momentum',
                 'layer_decay', 'warmup_epochs', 'warmup_lr', 'min_lr', 'smoothing', 'clip_grad', 'amp', 'amp_dtype',
                 'ema', 'ema_decay', 'seed', 'drop_rate', 'drop_path_rate', 'drop_block_rate', 'freeze_backbone',
                 'hflip', 'scale', 'aa', 'train_subset')


def _changed_settings(saved: Dict[str, Any], args: argparse.Namespace) -> List[str]:
    out = []
    for key in _RUN_SETTINGS:
        if key not in saved:
            continue
        old, new = saved[key], getattr(args, key)
        if isinstance(new, tuple):
            new = list(new)
        if old != new:
            out.append(f'--{key.replace("_", "-")} {new} (was {old})')
    return out


def _print(ds: DistState, *a, **kw) -> None:
    if ds.is_main:
        print(*a, **kw, flush=True)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Train, validate, checkpoint and export as ``args`` says; return the results (on every rank)."""
    t_start = time.perf_counter()
    args = _fill_defaults(args)
    ds = _setup_distributed(args.device)
    try:
        return _run(args, ds, t_start)
    finally:
        if ds.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _run(args: argparse.Namespace, ds: DistState, t_start: float) -> Dict[str, Any]:
    out = Path(args.output)
    resume_state = None
    if args.resume is not None:
        resume_state = _read_checkpoint(_find_checkpoint(args.resume, args.output))
        if resume_state['model'] != args.model:
            raise FinetuneError(f"the checkpoint in {Path(resume_state['_folder']).parent} is from "
                                f"{resume_state['model']}, not {args.model} (pass the same --model to resume)")
        if resume_state.get('in_chans', args.in_chans) != args.in_chans:
            raise FinetuneError(f"the checkpoint has in_chans={resume_state['in_chans']}, not {args.in_chans} "
                                f"(pass --in-chans {resume_state['in_chans']} to resume it)")
    _check_model_name(args.model)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    # --- classes, then the model, then the data with the model's pretrained_cfg (mean, std, crop, size)
    class_names = [str(i) for i in range(10)] if args.data_dir is None else _folder_classes(args)
    num_classes = len(class_names)
    if args.num_classes is not None and args.num_classes != num_classes:
        raise FinetuneError(f'--num-classes {args.num_classes} disagrees with the data, which has {num_classes} '
                            f'classes ({", ".join(class_names[:5])}{", ..." if num_classes > 5 else ""})')
    if resume_state is not None and resume_state.get('num_classes', num_classes) != num_classes:
        raise FinetuneError(f"the checkpoint has {resume_state['num_classes']} classes but the data has {num_classes}")
    model = _create_model(args, num_classes)
    data_config = _data_config(args, model)
    data = _load_digits(args, data_config) if args.data_dir is None else _load_folders(args, data_config, class_names)
    trainable = _freeze_backbone(model) if args.freeze_backbone else None
    model.to(ds.device)

    # --- loaders: the order comes from (seed, epoch) through the sampler, per rank
    per_rank = math.ceil(len(data.train) / ds.world_size)
    if per_rank < 2:
        raise FinetuneError(f'{len(data.train)} training image(s) for {ds.world_size} process(es): BatchNorm needs '
                            f'at least 2 images per process and batch')
    batch_size = min(args.batch_size, per_rank)
    if batch_size < args.batch_size:
        _print(ds, f'note: batch size {args.batch_size} > {per_rank} training images per process; using {batch_size}')
    train_sampler = DistributedSampler(data.train, num_replicas=ds.world_size, rank=ds.rank, shuffle=True,
                                       seed=args.seed, drop_last=False)
    pin = ds.device.type == 'cuda'
    train_loader = DataLoader(data.train, batch_size=batch_size, sampler=train_sampler, num_workers=args.workers,
                              drop_last=True, pin_memory=pin)
    val_loader = DataLoader(data.val, batch_size=max(batch_size, 64),
                            sampler=ShardSampler(len(data.val), ds.rank, ds.world_size),
                            num_workers=args.workers, pin_memory=pin)
    updates_per_epoch = len(train_loader)

    # --- optimizer, schedule, EMA, AMP
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, layer_decay=args.layer_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=args.epochs,
                                       warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                                       min_lr=args.min_lr, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    amp_dtype = None
    if args.amp:
        name = args.amp_dtype or ('float16' if ds.device.type == 'cuda' else 'bfloat16')
        if ds.device.type == 'cpu' and name == 'float16':
            raise FinetuneError('--amp-dtype float16 needs CUDA; on CPU use bfloat16')
        amp_dtype = getattr(torch, name)
    scaler = torch.amp.GradScaler('cuda') if amp_dtype is torch.float16 else None
    ema = ModelEmaV3(model, decay=args.ema_decay, use_warmup=True) if args.ema else None
    criterion = nn.CrossEntropyLoss(label_smoothing=args.smoothing)

    start_epoch, global_step, best, history = 0, 0, None, []
    if resume_state is not None:
        folder = Path(resume_state['_folder'])
        _load_safetensors_into(model, folder / 'model.safetensors', 'checkpoint')
        if ema is not None:
            if not (folder / 'ema.safetensors').is_file():
                raise FinetuneError(f'--ema: the checkpoint {folder} has no ema.safetensors (it was run without --ema)')
            _load_safetensors_into(ema.module, folder / 'ema.safetensors', 'checkpoint EMA')
        try:
            train_state = torch.load(str(folder / 'train_state.pt'), map_location='cpu', weights_only=True)
            optimizer.load_state_dict(train_state['optimizer'])
            if resume_state['args'].get('epochs') == args.epochs:  # else: a new schedule over --epochs
                scheduler.load_state_dict(train_state['scheduler'])
            if scaler is not None and train_state.get('scaler'):
                scaler.load_state_dict(train_state['scaler'])
            _set_rng_state(train_state['rng'])
        except FinetuneError:
            raise
        except Exception as e:
            raise FinetuneError(f'cannot restore the training state from {folder}/train_state.pt '
                                f'(a different optimizer or --freeze-backbone/--layer-decay?): {_first_line(e)}') from e
        start_epoch = int(resume_state['epoch']) + 1
        global_step = int(resume_state['global_step'])
        best = resume_state.get('best')
        history = list(resume_state.get('history', []))
        _print(ds, f'resuming {args.model} from {folder} (epoch {start_epoch}/{args.epochs} done)')
        changed = _changed_settings(resume_state.get('args', {}), args)
        if changed:
            _print(ds, 'note: resuming with other settings than the checkpoint\'s (' + ', '.join(changed) +
                   '); the result will differ from an uninterrupted run')

    ddp_model: nn.Module = model
    if ds.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ds.device.index] if ds.device.type == 'cuda' else None)

    progress = _Progress(ds.is_main and (args.progress if args.progress is not None else sys.stderr.isatty()))
    n_params = sum(p.numel() for p in model.parameters())
    _print(ds, f'{args.model}: {n_params / 1e6:.2f}M parameters'
               + (f' ({sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.3f}M trainable: '
                  f'{", ".join(trainable)})' if trainable else '')
               + f'; data: {data.description}; input {tuple(data_config["input_size"])}; '
               f'{ds.world_size} process(es) on {ds.device.type}; {args.epochs} epochs, batch {batch_size}'
               + (f' x {ds.world_size}' if ds.distributed else '') + f', {args.opt} lr {args.lr:g}')

    run_state = {'format': STATE_FORMAT, 'model': args.model, 'num_classes': num_classes, 'in_chans': args.in_chans,
                 'class_names': data.class_names, 'world_size': ds.world_size,
                 'args': {k: v for k, v in vars(args).items() if k not in ('rank_log_dir',)}}
    end_epoch = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    for epoch in range(start_epoch, end_epoch):
        _seed_epoch(args.seed, epoch, ds.rank)
        train_sampler.set_epoch(epoch)
        metrics, global_step = _train_one_epoch(ddp_model, ema, train_loader, optimizer, scheduler, scaler, criterion,
                                                ds, args, epoch, global_step, amp_dtype, progress, updates_per_epoch)
        lr = max(g['lr'] for g in optimizer.param_groups)  # where the schedule got to by the epoch's end
        val = _evaluate(model, val_loader, ds, amp_dtype, progress, f'val {epoch + 1}/{args.epochs}')
        row: Dict[str, Any] = {'epoch': epoch + 1, **metrics, 'val_loss': val['loss'], 'val_top1': val['top1'],
                               'val_top5': val['top5'], 'lr': lr}
        if ema is not None:
            ev = _evaluate(ema.module, val_loader, ds, amp_dtype, progress, f'ema {epoch + 1}/{args.epochs}')
            row.update(ema_val_loss=ev['loss'], ema_val_top1=ev['top1'], ema_val_top5=ev['top5'])
        history.append(row)
        score = row['ema_val_top1'] if ema is not None else row['val_top1']
        if best is None or score > best['val_top1']:
            best = {'epoch': epoch + 1, 'val_top1': score}
        _print(ds, _summary_line(row, args.epochs))
        if ds.is_main:
            _save_checkpoint(out, epoch, model, ema, optimizer, scheduler, scaler,
                             dict(run_state, global_step=global_step, best=best, history=history))
            if args.log_csv:
                _write_csv(Path(args.log_csv), history)
        if ds.distributed:
            dist.barrier()

    finished = bool(history) and history[-1]['epoch'] >= args.epochs
    final = history[-1] if history else None
    result: Dict[str, Any] = {'model': args.model, 'history': history, 'best': best, 'finished': finished,
                              'output': str(out), 'class_names': data.class_names, 'rank': ds.rank,
                              'world_size': ds.world_size, 'wall_time_s': time.perf_counter() - t_start}
    if final is not None:
        use_ema = ema is not None
        result['val_top1'] = final['ema_val_top1'] if use_ema else final['val_top1']
        result['val_top5'] = final['ema_val_top5'] if use_ema else final['val_top5']
        result['val_images'] = len(data.val)
    export_model = ema.module if ema is not None else model
    result['weights_checksum'] = float(sum(p.detach().double().sum().item() for p in export_model.parameters()))

    if finished and not args.no_export and ds.is_main:
        result['export_dir'] = str(_export(args, export_model, data, result))
    if not finished:
        _print(ds, f'stopped after epoch {history[-1]["epoch"] if history else start_epoch}/{args.epochs} '
                   f'({time.perf_counter() - t_start:.1f}s); continue with the same command and --resume')
    elif final is not None:
        _print(ds, f"validation top-1: {result['val_top1']:.2f}% ({len(data.val)} images"
                   f"{', EMA weights' if ema is not None else ''}; best {best['val_top1']:.2f}% at epoch "
                   f"{best['epoch']}) - {time.perf_counter() - t_start:.1f}s in all")
    if args.rank_log_dir:
        Path(args.rank_log_dir).mkdir(parents=True, exist_ok=True)
        _atomic_write_json(Path(args.rank_log_dir) / f'rank{ds.rank}.json',
                           {k: v for k, v in result.items() if k != 'wall_time_s'})
    if ds.distributed:
        dist.barrier()
    return result


def _export(args, model: nn.Module, data: Data, result: Dict[str, Any]) -> Path:
    try:
        from .hub import save_for_hub
    except ImportError:  # pragma: no cover - the hub module ships with the package
        save_for_hub = None
    export_dir = Path(args.export_dir)
    cfg = data.data_config
    data_config = {k: cfg[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
                   if k in cfg}
    acc = f"{result['val_top1']:.2f}%"
    n_val = len(data.val)
    description = (f'`{args.model}` fine-tuned with `timm_metalayers.finetune` on {data.description}. '
                   f'Validation top-1: **{acc}** (top-5 {result["val_top5"]:.2f}%) after {args.epochs} epochs'
                   f'{" (EMA weights)" if args.ema else ""}; seed {args.seed}.')
    model = model.to('cpu').eval()
    source_cfg = dict(model.pretrained_cfg)
    cfg_out = dict(source_cfg)
    cfg_out.pop('file', None)  # a local path of this machine
    pretrained = bool(args.pretrained or args.pretrained_file)
    if not pretrained:  # trained from scratch: the registered tag's weights, license and origin do not apply
        for key in ('tag', 'license', 'origin_url', 'hf_hub_id', 'hf_hub_filename', 'url', 'paper_ids',
                    'paper_name', 'notes', 'source'):
            cfg_out.pop(key, None)
    cfg_out.update(data_config)  # the preprocessing this model was trained and validated with
    for key in ('test_input_size', 'test_crop_pct', 'pool_size'):
        cfg_out.pop(key, None)
    model.pretrained_cfg = cfg_out
    name = export_dir.resolve().name if export_dir.resolve().name != 'hub' else export_dir.resolve().parent.name
    base_model = source_cfg.get('hf_hub_id') if args.pretrained else None
    if save_for_hub is not None:
        save_for_hub(model, export_dir, label_names=data.class_names, data_config=data_config,
                     description=description, model_name=name, repo_id=args.repo_id,
                     license=str(cfg_out.get('license') or 'apache-2.0').lower(),
                     base_model=base_model.rstrip('/') if base_model else None)
    else:
        from timm.models import save_for_hf
        save_for_hf(model, str(export_dir), model_config={'label_names': data.class_names}, data_config=data_config,
                    safe_serialization=True)
    card = export_dir / 'README.md'
    if card.is_file():
        rows = [('Dataset', data.description), ('Epochs', str(args.epochs)),
                ('Validation top-1', acc), ('Validation top-5', f"{result['val_top5']:.2f}%"),
                ('Validation images', str(n_val)), ('Seed', str(args.seed)),
                ('Processes', str(result['world_size'])),
                ('Command', '`python -m timm_metalayers.finetune ' + ' '.join(_cli_echo(args)) + '`')]
        text = card.read_text(encoding='utf-8').rstrip('\n')
        text += '\n\n## Training results\n\n| | |\n|---|---|\n' + '\n'.join(f'| {k} | {v} |' for k, v in rows) + '\n'
        _atomic_write_bytes(card, text.encode('utf-8'))
    print(f'exported to {export_dir}/ (model.safetensors, config.json with {len(data.class_names)} class names, '
          f'README.md model card with validation top-1 {acc})', flush=True)
    repo = args.repo_id or f'<your-name>/{name}'
    print(f'load it:    import timm, timm_metalayers; '
          f'model = timm.create_model("local-dir:{export_dir}", pretrained=True)', flush=True)
    print(f'publish it: huggingface-cli upload {repo} {export_dir} . ; then '
          f'timm.create_model("hf-hub:{repo}", pretrained=True)', flush=True)
    return export_dir


def _cli_echo(args) -> List[str]:
    """The non-default command-line options of this run (for the model card)."""
    parser = build_parser()
    defaults = vars(parser.parse_args([]))
    words = []
    for action in parser._actions:
        dest = action.dest
        if dest in ('help', 'rank_log_dir', 'resume', 'stop_after', 'progress') or not action.option_strings:
            continue
        value = getattr(args, dest, None)
        if value == defaults.get(dest) or value is None:
            continue
        if _fill_defaults_value(dest, args) == value:
            continue
        if dest == 'export_dir' and value == os.path.join(args.output, 'hub'):
            continue
        flag = action.option_strings[-1]
        if isinstance(value, bool):
            if value:
                words.append(flag)
        elif isinstance(value, (list, tuple)):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return words


def _fill_defaults_value(dest: str, args) -> Any:
    if dest in _MODE_DEFAULTS:
        return _MODE_DEFAULTS[dest][0 if args.data_dir is None else 1]
    if dest == 'in_chans':
        return 1 if args.data_dir is None else 3
    return object()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point: 0 on success, 2 on a user error (one line on stderr), 130 on Ctrl-C."""
    args = parse_args(argv)
    try:
        run(args)
    except FinetuneError as e:
        if _env_rank() == 0:
            print(f'error: {e}', file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        if _env_rank() == 0:
            print('interrupted; the last finished epoch is saved - continue with the same command and --resume',
                  file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
