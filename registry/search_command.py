"""`qrecipe search OVERRIDES`: find the cheapest per-layer mix that meets a budget, write it as a
recipe, run and measure it, record the search and its Pareto front (registry/search_flow.py).

    qrecipe search search.budget.bits_per_weight=4.5
    qrecipe search search.budget.max_kl=0.05 search.sensitivity=exact
    qrecipe search search.budget.bits_per_weight=5 'search.candidates=[keep,W8A16,W4A16:g64,W4A16:g32:asym]'
"""

from __future__ import annotations

import json


def cmd_search(args) -> int:
    from qrecipe.engine.config import compose
    from qrecipe.engine.search.spec import with_search_group

    from .search_flow import render, search_and_record

    cfg = compose(with_search_group(args.overrides))
    if args.cfg:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg.search if args.cfg == "search" else cfg, resolve=False))
        return 0
    outcome = search_and_record(cfg, progress=not args.no_progress)
    print(json.dumps(outcome, default=str) if args.json else render(outcome), flush=True)
    return 0


def add_search_command(sub, common_flags) -> None:
    p = sub.add_parser("search", help="find the cheapest per-layer mix that meets a budget; write, run and measure it")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON object (the search's outcome)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--cfg", choices=["job", "search"],
                   help="print the composed config (or its search section) and exit")
    common_flags(p)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. search.budget.bits_per_weight=4.5")
    p.set_defaults(func=cmd_search)
