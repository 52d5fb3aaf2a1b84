#!/usr/bin/env python
"""Generate ``model_cards/<model>.<tag>.md`` for every registered ``metalayers_*`` pretrained tag.

    python scripts/make_model_cards.py            # write / refresh the cards, remove stale ones
    python scripts/make_model_cards.py --check    # exit 1 if a card is missing, stale or orphaned

Cards are rendered by :func:`timm_metalayers.hub.pretrained_model_card`: Hub front matter, what the
model is and which ``timm_metalayers`` layers it uses, where its weights come from (timm's Hub repo
and licence), parameter count and GMACs computed on the meta device, and a usage snippet.
"""
from __future__ import annotations

import argparse
import fnmatch
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / 'model_cards'
DEFAULT_FILTER = 'metalayers_*'


def expected_cards(pattern: str = DEFAULT_FILTER) -> Dict[str, str]:
    """``{file name: card text}`` for every registered pretrained tag matching ``pattern``."""
    import timm
    import timm_metalayers  # noqa: F401  (registers the models)
    from timm_metalayers.hub import pretrained_model_card

    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f'pattern must be a non-empty glob like "metalayers_*", got {pattern!r}')
    return {f'{name}.md': pretrained_model_card(name) for name in sorted(timm.list_pretrained(pattern))}


def compare(out_dir: Path, cards: Dict[str, str], pattern: str = DEFAULT_FILTER) -> Dict[str, List[str]]:
    """Which cards in ``out_dir`` are missing, stale (differ) or orphaned (no such tag any more)."""
    present = {p.name for p in out_dir.glob('*.md')} if out_dir.is_dir() else set()
    orphaned = sorted(n for n in present - set(cards) if fnmatch.fnmatch(n, pattern))
    missing = sorted(set(cards) - present)
    stale = sorted(n for n in set(cards) & present if (out_dir / n).read_text(encoding='utf-8') != cards[n])
    return {'missing': missing, 'stale': stale, 'orphaned': orphaned}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='only check; exit 1 when cards are out of date')
    parser.add_argument('--out', type=Path, default=DEFAULT_OUT, help=f'card folder (default: {DEFAULT_OUT})')
    parser.add_argument('--filter', default=DEFAULT_FILTER, help=f'pretrained tag glob (default: {DEFAULT_FILTER})')
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f'--out {args.out} exists and is not a folder')

    cards = expected_cards(args.filter)
    problems = compare(args.out, cards, args.filter)
    if args.check:
        bad = False
        for kind, names in problems.items():
            for name in names:
                print(f'{kind}: {args.out / name}')
                bad = True
        if bad:
            print('model cards are out of date: run  python scripts/make_model_cards.py', file=sys.stderr)
            return 1
        print(f'{len(cards)} model card(s) up to date in {args.out}')
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    for name in problems['missing'] + problems['stale']:
        (args.out / name).write_text(cards[name], encoding='utf-8')
        print(f'wrote {args.out / name}')
    for name in problems['orphaned']:
        (args.out / name).unlink()
        print(f'removed {args.out / name}')
    print(f'{len(cards)} model card(s) in {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
