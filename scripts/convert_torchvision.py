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
    parser.add_argument('--aux-logits', action='store_true',
                        help="metalayers_googlenet: keep the checkpoint's two auxiliary classifiers (the folder's "
                             'config then builds the model with aux_logits=True); without it they are dropped, as '
                             "torchvision's own pretrained googlenet drops them")
    parser.add_argument('--repo-id', default=None, help='the Hub repo the folder is meant for (model card)')
    return parser.parse_args(argv)


def _num_classes(state_dict, model_name: str) -> int:
    """The classifier's width: ``head.fc.bias`` in our naming, else the bias of torchvision's output layer
    (``fc``, ``classifier.1``, ``classifier.6``: the last bias torchvision's model registers; a safetensors file
    lists its keys sorted, so the checkpoint's own order cannot tell)."""
    import warnings

    import torch
    from timm_metalayers.models._torchvision import TORCHVISION_TWINS, create_torchvision_twin

    if 'head.fc.bias' in state_dict:
        return int(state_dict['head.fc.bias'].shape[0])
    with warnings.catch_warnings(), torch.device('meta'):  # names only: no memory, no init
        warnings.simplefilter('ignore')
        twin = create_torchvision_twin(model_name)
    key = [k for k in twin.state_dict() if k.endswith('.bias')][-1]
    if key not in state_dict:
        raise ValueError(f"cannot tell the number of classes: the checkpoint has no {key} (the output layer of "
                         f"torchvision's {TORCHVISION_TWINS[model_name][0]}); pass --num-classes")
    return int(state_dict[key].shape[0])


def convert(checkpoint: Path, output: Path, model_name: str, *, num_classes: Optional[int] = None,
            allow_pickle: Optional[bool] = None, repo_id: Optional[str] = None, aux_logits: bool = False) -> Path:
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
    if aux_logits and model_name != 'metalayers_googlenet':
        raise ValueError(f'--aux-logits is for metalayers_googlenet, not {model_name}')
    if num_classes is not None and num_classes < 1:
        raise ValueError(f'--num-classes must be a positive integer, got {num_classes}')
    state_dict = read_state_dict(checkpoint, allow_pickle=allow_pickle)
    if num_classes is None:
        num_classes = _num_classes(state_dict, model_name)
    model_args = {'aux_logits': True} if aux_logits else None
    model = timm.create_model(model_name, num_classes=num_classes, **(model_args or {}))
    load_weights(model, state_dict)
    tv_name = TORCHVISION_TWINS[model_name][0]
    return save_for_hub(model.eval(), output, repo_id=repo_id, license='bsd-3-clause', model_args=model_args,
                        description=f'{model_name} with the weights of a torchvision `{tv_name}` checkpoint '
                                    f'({checkpoint.name}), converted by scripts/convert_torchvision.py.')


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        out = convert(args.checkpoint, args.output, args.model, num_classes=args.num_classes,
                      allow_pickle=args.allow_pickle, repo_id=args.repo_id, aux_logits=args.aux_logits)
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
