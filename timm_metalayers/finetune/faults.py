"""A test hook: stop the process at a named point of checkpoint writing or export.

The fault-injection tests set ``TIMM_METALAYERS_FINETUNE_FAULT`` to ``POINT[@EPOCH][:SIGNAL[:rankR]]``,
for instance ``checkpoint.renamed@1:SIGKILL`` or ``epoch.start@1:SIGKILL:rank1``; the process sends
itself that signal (default ``SIGKILL``) when it reaches the point. Unset, the hook does nothing.
"""
from __future__ import annotations

import os
import signal
from typing import Optional

__all__ = ['FAULT_ENV', 'FAULT_POINTS', 'fault_point']

FAULT_ENV = 'TIMM_METALAYERS_FINETUNE_FAULT'

#: Every point the hook knows, in the order a run reaches them.
FAULT_POINTS = (
    'epoch.start',
    'checkpoint.start', 'checkpoint.weights-written', 'checkpoint.state-written', 'checkpoint.renamed',
    'checkpoint.json-written', 'checkpoint.json-replaced', 'checkpoint.pruned',
    'export.start', 'export.written', 'export.placing', 'export.done',
)


def fault_point(name: str, epoch: Optional[int] = None) -> None:
    """Signal this process if ``TIMM_METALAYERS_FINETUNE_FAULT`` names this point (and epoch and rank)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    where, _, rest = spec.partition(':')
    point, _, at_epoch = where.partition('@')
    signal_name, _, at_rank = rest.partition(':')
    if point != name or (at_epoch and epoch != int(at_epoch)):
        return
    if at_rank and os.environ.get('RANK', '0') != at_rank.removeprefix('rank'):
        return
    os.kill(os.getpid(), getattr(signal, signal_name or 'SIGKILL'))
