"""Training and validation data: scikit-learn's digits, or ``train/`` and ``val/`` class folders.

In a folder dataset every image anywhere under a class folder (``train/cat/2019/a.png`` included) belongs
to that class; hidden files and folders are skipped. The images counted are the images trained on.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from timm.data import ImageDataset, create_transform
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader import Reader

from .distributed import DistState
from .errors import FinetuneError

__all__ = ['Data', 'DigitsDataset', 'ClassFolderReader', 'scan_split', 'folder_classes', 'load_data', 'Loaders',
           'make_loaders', 'ShardSampler', 'DIGITS_CLASSES']

DIGITS_CLASSES = [str(i) for i in range(10)]
PREPROCESSING_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')


@dataclass
class Data:
    """The two splits, the class names and the preprocessing they were built with."""
    train: Dataset
    val: Dataset
    class_names: List[str]
    data_config: Dict[str, Any]
    description: str


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits, upsampled once to ``img_size``; random affine jitter when training."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, img_size: int, in_chans: int,
                 mean: Sequence[float], std: Sequence[float], train: bool):
        x = F.interpolate(images.unsqueeze(1), size=(img_size, img_size), mode='bilinear', align_corners=False)
        self.images = x.clamp_(0, 1).repeat(1, in_chans, 1, 1).contiguous()
        self.labels = labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = None
        if train:
            from torchvision.transforms import v2
            self.augment = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i]
        if self.augment is not None:
            x = self.augment(x)
        return (x - self.mean) / self.std, int(self.labels[i])


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
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0,
                                          stratify=digits.target)
    train_idx = np.sort(train_idx)[:args.train_subset]
    size = data_config['input_size'][-1]
    mean, std = data_config['mean'], data_config['std']
    train = DigitsDataset(images[train_idx], labels[train_idx], size, args.in_chans, mean, std, train=True)
    val = DigitsDataset(images[val_idx], labels[val_idx], size, args.in_chans, mean, std, train=False)
    return Data(train, val, DIGITS_CLASSES, data_config,
                f"scikit-learn's digits (load_digits: {len(train_idx)} training / {len(val_idx)} validation "
                f"images, 8x8 upsampled to {size}x{size})")


# ------------------------------------------------------------------------------------------------
# Class folders
# ------------------------------------------------------------------------------------------------
def _images_under(folder: Path, extensions: Tuple[str, ...]) -> List[Path]:
    """Every image file anywhere under ``folder`` (hidden files and folders skipped), sorted."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        found += [Path(parent, f) for f in files if not f.startswith('.') and f.lower().endswith(extensions)]
    return sorted(found)


def scan_split(root: Path, split: str) -> Dict[str, List[Path]]:
    """{class name: its image files} of ``root/split``, with one-line errors for every bad layout."""
    folder = root / split
    extensions = tuple(sorted(e.lower() for e in get_img_extensions(as_set=True)))
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith('.'))
    if not classes:
        raise FinetuneError(f'{folder} has no class folders (expected {folder}/<class>/<image files>)')
    images = {}
    for c in classes:
        images[c.name] = _images_under(c, extensions)
        if not images[c.name]:
            raise FinetuneError(f'class folder {c} has no images ({", ".join(extensions[:6])}, ...)')
    return images


def folder_classes(data_dir: str) -> Tuple[List[str], Dict[str, Dict[str, List[Path]]]]:
    """Check the layout of ``--data-dir``; return the class names (train/'s sub-folders, sorted) and
    the image files of each split and class."""
    root = Path(data_dir)
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
    splits = {split: scan_split(root, split) for split in ('train', 'val')}
    class_names = sorted(splits['train'])
    if len(class_names) < 2:
        raise FinetuneError(f'{root}/train has one class folder only ({class_names[0]}): a classifier needs at '
                            f'least two classes (its top-1 would be 100% by construction)')
    unknown = sorted(set(splits['val']) - set(class_names))
    if unknown:
        raise FinetuneError(f'{root}/val has classes that train/ lacks: {", ".join(unknown[:5])}')
    return class_names, splits


class ClassFolderReader(Reader):
    """A timm reader over an explicit list of ``(image file, class index)`` pairs."""

    def __init__(self, samples: Sequence[Tuple[Path, int]]):
        super().__init__()
        self.samples = list(samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return str(path), target

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index, basename=False, absolute=False):
        path = self.samples[index][0]
        return path.name if basename else str(path.absolute() if absolute else path)


def _folder_dataset(images: Dict[str, List[Path]], class_names: List[str], args: argparse.Namespace,
                    transform) -> ImageDataset:
    index = {c: i for i, c in enumerate(class_names)}
    samples = [(path, index[c]) for c in sorted(images) for path in images[c]]
    return ImageDataset('', reader=ClassFolderReader(samples), transform=transform,
                        input_img_mode='L' if args.in_chans == 1 else 'RGB')


def _load_folders(args: argparse.Namespace, data_config: Dict[str, Any], class_names: List[str],
                  splits: Dict[str, Dict[str, List[Path]]]) -> Data:
    cfg = {k: data_config[k] for k in PREPROCESSING_KEYS if k in data_config}
    train_transform = create_transform(**{k: v for k, v in cfg.items() if k not in ('crop_pct', 'crop_mode')},
                                       is_training=True, hflip=args.hflip, scale=tuple(args.scale),
                                       auto_augment=args.aa)
    train = _folder_dataset(splits['train'], class_names, args, train_transform)
    val = _folder_dataset(splits['val'], class_names, args, create_transform(**cfg, is_training=False))
    if args.train_subset is not None:
        train = torch.utils.data.Subset(train, range(min(args.train_subset, len(train))))
    root = Path(args.data_dir).resolve()
    return Data(train, val, class_names, data_config,
                f'{root.name} ({len(train)} training / {len(val)} validation images, {len(class_names)} classes)')


def load_data(args: argparse.Namespace, data_config: Dict[str, Any],
              splits: Optional[Dict[str, Dict[str, List[Path]]]], class_names: List[str]) -> Data:
    """The digits (no ``--data-dir``) or the scanned class folders, preprocessed as ``data_config`` says."""
    if args.data_dir is None:
        return _load_digits(args, data_config)
    return _load_folders(args, data_config, class_names, splits)


# ------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------
class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``: each sample evaluated exactly once across ranks."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_sampler: DistributedSampler
    batch_size: int

    @property
    def updates_per_epoch(self) -> int:
        return len(self.train)


def make_loaders(data: Data, args: argparse.Namespace, ds: DistState) -> Loaders:
    """Loaders whose training order comes from ``(seed, epoch)`` through the sampler, per rank."""
    per_rank = math.ceil(len(data.train) / ds.world_size)
    if per_rank < 2:
        raise FinetuneError(f'{len(data.train)} training image(s) for {ds.world_size} process(es): BatchNorm needs '
                            f'at least 2 images per process and batch')
    batch_size = min(args.batch_size, per_rank)
    if batch_size < args.batch_size:
        ds.print(f'note: batch size {args.batch_size} > {per_rank} training images per process; using {batch_size}')
    sampler = DistributedSampler(data.train, num_replicas=ds.world_size, rank=ds.rank, shuffle=True, seed=args.seed,
                                 drop_last=False)
    pin = ds.device.type == 'cuda'
    train = DataLoader(data.train, batch_size=batch_size, sampler=sampler, num_workers=args.workers, drop_last=True,
                       pin_memory=pin)
    val = DataLoader(data.val, batch_size=max(batch_size, 64), sampler=ShardSampler(len(data.val), ds.rank,
                     ds.world_size), num_workers=args.workers, pin_memory=pin)
    return Loaders(train, val, sampler, batch_size)
