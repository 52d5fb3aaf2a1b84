"""The export at the end of a run: :func:`timm_metalayers.hub.save_for_hub`'s publishable folder.

The folder is written in a temporary folder next to the target, completed (model card with the training
results included), then its files are moved into place one by one with ``os.replace``: an interrupted
export leaves whole files only, and running the same command with ``--resume`` exports again.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict

from torch import nn

from ..hub import save_for_hub
from .checkpoint import atomic_write_bytes, follow_umask, make_temp_dir
from .cli import command_line_echo
from .data import PREPROCESSING_KEYS, Data
from .faults import fault_point

__all__ = ['export', 'remove_stray_exports']

# pretrained_cfg fields that describe the registered weights, not weights trained from scratch
_SOURCE_FIELDS = ('tag', 'license', 'origin_url', 'hf_hub_id', 'hf_hub_filename', 'url', 'paper_ids', 'paper_name',
                  'notes', 'source')


def _temp_prefix(export_dir: Path) -> str:
    return f'.{export_dir.name}.export.'


def remove_stray_exports(export_dir: Path) -> None:
    """Remove the temporary folders of exports that were killed (only this export's own pattern)."""
    parent = export_dir.parent
    if not parent.is_dir():
        return
    pattern = re.compile(re.escape(_temp_prefix(export_dir)) + r'[A-Za-z0-9_]+\.tmp')
    for entry in parent.iterdir():
        if entry.is_dir() and pattern.fullmatch(entry.name):
            shutil.rmtree(entry)


def _exported_cfg(model: nn.Module, data_config: Dict[str, Any], from_pretrained: bool) -> Dict[str, Any]:
    cfg = dict(model.pretrained_cfg)
    cfg.pop('file', None)  # a local path of this machine
    cfg.pop('state_dict', None)
    if not from_pretrained:  # trained from scratch: the registered tag's weights, license and origin do not apply
        for key in _SOURCE_FIELDS:
            cfg.pop(key, None)
    cfg.update(data_config)  # the preprocessing this model was trained and validated with
    for key in ('test_input_size', 'test_crop_pct', 'pool_size'):
        cfg.pop(key, None)
    return cfg


def _results_table(args: argparse.Namespace, data: Data, result: Dict[str, Any]) -> str:
    rows = [('Dataset', data.description), ('Epochs', str(args.epochs)),
            ('Validation top-1', f"{result['val_top1']:.2f}%"), ('Validation top-5', f"{result['val_top5']:.2f}%"),
            ('Validation images', str(len(data.val))), ('Seed', str(args.seed)),
            ('Processes', str(result['world_size'])),
            ('Command', '`python -m timm_metalayers.finetune ' + ' '.join(command_line_echo(args)) + '`')]
    return '\n\n## Training results\n\n| | |\n|---|---|\n' + '\n'.join(f'| {k} | {v} |' for k, v in rows) + '\n'


def _write_export(folder: Path, args: argparse.Namespace, model: nn.Module, data: Data, result: Dict[str, Any],
                  name: str) -> None:
    data_config = {k: data.data_config[k] for k in PREPROCESSING_KEYS if k in data.data_config}
    source_cfg = dict(model.pretrained_cfg)
    model.pretrained_cfg = _exported_cfg(model, data_config, bool(args.pretrained or args.pretrained_file))
    base_model = source_cfg.get('hf_hub_id') if args.pretrained else None
    description = (f'`{args.model}` fine-tuned with `timm_metalayers.finetune` on {data.description}. '
                   f"Validation top-1: **{result['val_top1']:.2f}%** (top-5 {result['val_top5']:.2f}%) after "
                   f'{args.epochs} epochs{" (EMA weights)" if args.ema else ""}; seed {args.seed}.')
    save_for_hub(model, folder, timm_native=args.timm_native, label_names=data.class_names, data_config=data_config, description=description,
                 model_name=name, repo_id=args.repo_id,
                 license=str(model.pretrained_cfg.get('license') or 'apache-2.0').lower(),
                 base_model=base_model.rstrip('/') if base_model else None)
    card = folder / 'README.md'
    atomic_write_bytes(card, (card.read_text(encoding='utf-8').rstrip('\n') + _results_table(args, data, result))
                       .encode('utf-8'))
    for f in folder.iterdir():  # the weights too, which safetensors writes as 0600
        follow_umask(f)


def export(args: argparse.Namespace, model: nn.Module, data: Data, result: Dict[str, Any]) -> Path:
    """Write ``args.export_dir`` (weights, config with the class names, model card with the measured
    accuracy) and print how to load and publish it."""
    export_dir = Path(args.export_dir)
    fault_point('export.start')
    resolved = export_dir.resolve()
    name = resolved.name if resolved.name != 'hub' else resolved.parent.name
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(export_dir.parent, _temp_prefix(export_dir))
    try:
        _write_export(tmp, args, model.to('cpu').eval(), data, result, name)
        fault_point('export.written')
        export_dir.mkdir(exist_ok=True)
        for i, f in enumerate(sorted(tmp.iterdir())):
            os.replace(f, export_dir / f.name)
            if i == 0:
                fault_point('export.placing')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fault_point('export.done')
    acc = f"{result['val_top1']:.2f}%"
    print(f'exported to {export_dir}/ (model.safetensors, config.json with {len(data.class_names)} class names, '
          f'README.md model card with validation top-1 {acc})', flush=True)
    repo = args.repo_id or f'<your-name>/{name}'
    imports = 'import timm' if args.timm_native else 'import timm, timm_metalayers'
    print(f'load it:    {imports}; model = timm.create_model("local-dir:{export_dir}", pretrained=True)', flush=True)
    print(f'publish it: huggingface-cli upload {repo} {export_dir} . ; then '
          f'timm.create_model("hf-hub:{repo}", pretrained=True)', flush=True)
    return export_dir
