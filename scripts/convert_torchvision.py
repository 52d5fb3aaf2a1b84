#!/usr/bin/env python
"""Turn a torchvision checkpoint you already have into a ``save_for_hub`` folder for its metalayers twin.

    python scripts/convert_torchvision.py alexnet-owt-7be5be79.pth out/alexnet --model metalayers_alexnet \\
        --allow-pickle

The checkpoint is a state dict (``.safetensors``, or a ``.pth`` / ``.pt`` / ``.bin`` pickle, read with
``torch.load(weights_only=True)`` and only with ``--allow-pickle`` or ``TIMM_METALAYERS_ALLOW_PICKLE=1``).
It goes through the family's ``checkpoint_filter_fn`` (every key mapped, every shape checked), and the folder
gets ``model.safetensors``, ``config.json`` and a ``README.md`` card, so that
``timm.create_model("hf-hub:<repo>", pretrained=True)`` (or ``hub.load_weights(model, folder)``) loads it.
Bad input ends with one ``error:`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

PROG = 'convert_torchvision.py'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', type=Path, help='the torchvision state dict (.pth, .pt, .bin, .safetensors)')
    parser.add_argument('output', type=Path, help='folder to write (created if needed)')
    parser.add_argument('--model', required=True,
                        help='the twin to build: metalayers_googlenet, metalayers_squeezenet1_0, '
                             'metalayers_squeezenet1_1, metalayers_alexnet')
    parser.add_argument('--num-classes', type=int, default=None,
                        help="classes of the checkpoint's classifier (default: read from the checkpoint)")
    parser.add_argument('--allow-pickle', action='store_true', default=None,
                        help='allow a pickle checkpoint (read with torch.load(weights_only=True)); '
                             'TIMM_METALAYERS_ALLOW_PICKLE=1 does the same')
    parser.add_argument('--repo-id', default=None, help='the Hub repo the folder is meant for (model card)')
    return parser.parse_args(argv)


def _num_classes(state_dict) -> int:
    """The classifier's width: ``head.fc.bias`` in our naming, else the last bias (torchvision's output layer
    is registered last: ``fc``, ``classifier.1``, ``classifier.6``)."""
    if 'head.fc.bias' in state_dict:
        return int(state_dict['head.fc.bias'].shape[0])
    biases = [key for key, value in state_dict.items() if key.endswith('.bias') and value.dim() == 1]
    if not biases:
        raise ValueError('cannot tell the number of classes from the checkpoint (no bias); pass --num-classes')
    return int(state_dict[biases[-1]].shape[0])


def convert(checkpoint: Path, output: Path, model_name: str, *, num_classes: Optional[int] = None,
            allow_pickle: Optional[bool] = None, repo_id: Optional[str] = None) -> Path:
    """Read ``checkpoint``, load it into ``model_name`` through its filter, write the Hub folder ``output``."""
    import timm
    import timm_metalayers  # noqa: F401  (registers the models)
    from timm_metalayers.hub import load_weights, read_state_dict, save_for_hub
    from timm_metalayers.models._torchvision import TORCHVISION_TWINS

    if model_name not in TORCHVISION_TWINS:
        raise ValueError(f'--model {model_name!r} is not a twin of a torchvision model; use one of '
                         f'{sorted(TORCHVISION_TWINS)}')
    if not checkpoint.is_file():
        raise FileNotFoundError(f'checkpoint {str(checkpoint)!r} is not a file')
    if num_classes is not None and num_classes < 1:
        raise ValueError(f'--num-classes must be a positive integer, got {num_classes}')
    state_dict = read_state_dict(checkpoint, allow_pickle=allow_pickle)
    if num_classes is None:
        num_classes = _num_classes(state_dict)
    model = timm.create_model(model_name, num_classes=num_classes)
    load_weights(model, state_dict)
    tv_name = TORCHVISION_TWINS[model_name][0]
    return save_for_hub(model.eval(), output, repo_id=repo_id, license='bsd-3-clause',
                        description=f'{model_name} with the weights of a torchvision `{tv_name}` checkpoint '
                                    f'({checkpoint.name}), converted by scripts/convert_torchvision.py.')


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        out = convert(args.checkpoint, args.output, args.model, num_classes=args.num_classes,
                      allow_pickle=args.allow_pickle, repo_id=args.repo_id)
    except (OSError, ValueError, TypeError, KeyError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f'{PROG}: error: {message}', file=sys.stderr)
        return 2
    except Exception as e:  # hub errors (HubLoadError, CheckpointMismatchError, ...)
        from timm_metalayers.hub import HubLoadError
        if not isinstance(e, HubLoadError):
            raise
        print(f'{PROG}: error: {str(e).splitlines()[0]}', file=sys.stderr)
        return 2
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
