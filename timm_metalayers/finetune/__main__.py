"""``python -m timm_metalayers.finetune``: see :func:`timm_metalayers.finetune.main`."""
import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
