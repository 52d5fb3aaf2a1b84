"""``python -m timm_metalayers.export``: see :func:`timm_metalayers.export.cli.main`."""
import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
