#!/usr/bin/env python
"""Fine-tune a metalayers_* model: the same program as ``python -m timm_metalayers.finetune``.

    python examples/finetune.py                       # digits inside scikit-learn, >= 97% top-1, a few minutes on CPU
    python examples/finetune.py --data-dir data/ --model metalayers_resnet50.a1_in1k --pretrained
    torchrun --nproc_per_node=2 examples/finetune.py --data-dir data/
    python examples/finetune.py --help                # every option

See the ``timm_metalayers.finetune`` package (its ``checkpoint`` and ``run_folder`` modules) for what it writes
and how resuming works.
"""
import sys

from timm_metalayers.finetune import main

if __name__ == '__main__':
    sys.exit(main())
