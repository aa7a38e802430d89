"""``encred models``: list the VLMEvalKit model names this package registers."""

from __future__ import annotations

import argparse
import json

from ..registry import RegistryError, bases, entries, families
from ..validate import name_in


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help="list registered model entries with their masked and kept encoders",
        description="List every VLMEvalKit model name vlmeval-encred registers: each base model "
                    "(nothing masked) and one entry per non-empty subset of its encoders masked. "
                    "The entry that masks all encoders is the no-vision baseline. "
                    "With --tokens, also each base's registered token-budget variants (<entry>_keep<NN>[_llm[<K>]]), "
                    "which `encred sweep --keep` and `--subsets` accept.")
    p.add_argument("--family", type=name_in("family", families), help="only this family (a folder of model_wrappers/; the family column of this listing)")
    p.add_argument("--base", type=name_in("base model", lambda: [b.name for b in bases()]), help="only this base model (e.g. eagle_x5)")
    p.add_argument("--tokens", action="store_true",
                   help="also list the registered token-budget variants (keep 25/50/75 per stage the family "
                        "implements, on every mask where the stage is available; any other keep 1..100 is "
                        "registered on first use; docs/tokens.md)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.family and args.family not in families():
        raise SystemExit(f"encred models: unknown family {args.family!r}; known: {', '.join(families())}")
    try:
        rows = entries(family=args.family, base=args.base, tokens=args.tokens)
    except RegistryError as exc:
        raise SystemExit(f"encred models: {exc}")
    if args.json:
        print(json.dumps([{"name": e.name, "base": e.base.name, "family": e.base.family,
                           "checkpoint": e.base.checkpoint, "masked": list(e.masked),
                           "kept": list(e.kept), **({"tokens": e.tokens and e.tokens.as_kwargs()} if args.tokens
                                                    else {})} for e in rows], indent=1))
        return 0
    width = max((len(e.name) for e in rows), default=4)
    print(f"{'name':<{width}}  {'family':<15} {'masked':<28} " + ("kept" if not args.tokens else f"{'kept':<28} tokens"))
    for e in rows:
        masked = ",".join(e.masked) or "-"
        kept = ",".join(e.kept) or "- (no vision)"
        line = f"{e.name:<{width}}  {e.base.family:<15} {masked:<28} {kept}"
        print(line if not args.tokens else f"{line:<{width + 75}} {token_label(e.tokens)}")
    print(f"{len(rows)} entries")
    return 0


def token_label(tokens) -> str:
    """``keep 25% fusion`` / ``keep 25% llm K=1`` / ``-`` (unpruned): the budget column of ``--tokens``."""
    if tokens is None:
        return "-"
    return f"keep {tokens.keep}% {tokens.stage}" + (f" K={tokens.layer}" if tokens.stage == "llm" else "")
