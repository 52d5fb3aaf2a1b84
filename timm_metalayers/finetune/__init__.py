"""Fine-tune any ``metalayers_*`` model (or any timm model) on an image-classification dataset.

Run it with no arguments and it trains ``metalayers_resnet18`` on the handwritten digits that ship
inside scikit-learn (``sklearn.datasets.load_digits``: 1797 grayscale 8x8 images, nothing to download),
upsampled to 32x32, and prints the validation top-1 of a held-out split (20%, stratified, seed 0)::

    python -m timm_metalayers.finetune                 # or: python examples/finetune.py

Your own images: ``train/`` and ``val/`` folders with one sub-folder per class::

    python -m timm_metalayers.finetune --data-dir data/ --model metalayers_resnet50.a1_in1k --pretrained

Several processes: ``torchrun --nproc_per_node=2 -m timm_metalayers.finetune --data-dir data/``.
Interrupted? The same command with ``--resume`` continues and ends as an uninterrupted run would.

The modules, by concern: :mod:`.cli` (options and ``main``), :mod:`.data`, :mod:`.distributed`,
:mod:`.model`, :mod:`.checkpoint` and :mod:`.run_folder` (what is written, and the lock),
:mod:`.engine` (train and evaluate), :mod:`.export`, :mod:`.runner` (``run``: prepare, restore, fit,
finish) and :mod:`.faults` (the fault-injection hook of the tests).
"""
from .cli import DEFAULT_MODEL, build_parser, main, parse_args
from .errors import FinetuneError, RunFailedError
from .runner import run

__all__ = ['FinetuneError', 'RunFailedError', 'build_parser', 'parse_args', 'run', 'main', 'DEFAULT_MODEL']
