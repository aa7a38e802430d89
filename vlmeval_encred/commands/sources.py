"""``encred sources``: where each upstream repository lives on this machine.

The families' real code is other projects' code; it reaches this project only as a
clone the user made, registered here once (``~/.config/vlmeval-encred/sources.toml``,
see :mod:`vlmeval_encred.sources`).  ``list`` shows every repository the project knows,
the commit our tests pin, and where (and at which commit) it was found, or the one
command that registers it; ``encred doctor`` prints the same table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sources", help="register, list and remove the upstream clones the families' real code comes from",
        description="Where each upstream repository (EAGLE, Cambrian, DeepSeek-VL, ..., VLMEvalKit) lives on "
                    "this machine. Registered once per user in ~/.config/vlmeval-encred/sources.toml "
                    "(XDG_CONFIG_HOME); ENCRED_SRC_<NAME> overrides an entry for one process.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    ls = verbs.add_parser("list", help="every known repository, its tested commit and where it was found")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    add = verbs.add_parser("add", help="register a clone (or a bare git directory with --commit)")
    add.add_argument("name", help="the repository's short name (see `encred sources list`)")
    add.add_argument("path", help="a working clone, or a bare git directory (then --commit is needed)")
    add.add_argument("--commit", default=None,
                     help="for a bare git directory: the commit to use (extracted once into the cache)")
    rm = verbs.add_parser("remove", help="forget a registered repository (its files are left alone)")
    rm.add_argument("name")
    p.set_defaults(func=run, verb=None)


def _list(args: argparse.Namespace) -> int:
    from ..sources import config_path
    from ..upstream import format_table, table

    rows = table()
    if args.json:
        print(json.dumps({"register": str(config_path()), "sources": [dataclasses.asdict(r) for r in rows]},
                         indent=1))
    else:
        print(f"register: {config_path()}")
        print(format_table(rows))
    return 0


def add(name: str, path: str, commit: str | None) -> str:
    """Register ``path`` as repository ``name``; returns what to tell the user.  Raises SourcesError /
    UpstreamNotFound / KeyError with the reason (the command turns them into one line)."""
    from .. import sources, upstream

    repo = upstream.get(name)
    where = Path(path).expanduser()
    if not where.exists():
        raise sources.SourcesError(f"{where} does not exist; clone {repo.url} first")
    where = where.resolve()
    if sources.is_bare(where):
        if not commit:
            raise sources.SourcesError(
                f"{where} is a bare git directory: say which commit to use, e.g. --commit {repo.commit[:12]} "
                f"(the commit our tests pin)")
        full = sources.resolve_commit(where, commit)
        root = sources.extract(name, where, full, upstream.cache_root() / "sources")
        entry = sources.Registered(name, str(where), full)
    else:
        if commit:
            raise sources.SourcesError(f"--commit is only for a bare git directory; {where} is a working "
                                       f"folder: check out the commit you want in it (git -C {where} checkout "
                                       f"{commit}) and register it without --commit")
        root = where
        entry = sources.Registered(name, str(where))
    if not (root / repo.import_root / repo.package).is_dir():
        raise sources.SourcesError(f"{where} does not look like a clone of {repo.url}: expected a folder "
                                   f"{Path(repo.import_root) / repo.package} in it")
    register = sources.put(entry)
    found = upstream.locate(name)
    msg = f"registered {name}: {found.root}"
    if found.commit and not found.at_tested_commit:
        msg += (f"\nwarning: it is at commit {found.commit[:12]}, our tests pin {repo.commit[:12]}; it will be "
                f"used, with this warning")
    elif not found.commit:
        msg += "\nwarning: not a git clone, so its commit cannot be told"
    lacking = sources.missing_files(found.root)
    if lacking:
        msg += (f"\nnote: the repository lacks the content of {len(lacking)} file(s) (e.g. {lacking[0]}); "
                f"they are listed in {found.root / sources.MISSING_FILE}")
    return msg + f"\n(in {register})"


def run(args: argparse.Namespace) -> int:
    from ..sources import SourcesError
    from ..upstream import UpstreamNotFound

    if args.verb in (None, "list"):
        if args.verb is None:
            args.json = False
        return _list(args)
    try:
        if args.verb == "add":
            print(add(args.name, args.path, args.commit))
            return 0
        from .. import sources, upstream

        upstream.get(args.name)
        if not sources.drop(args.name):
            print(f"encred sources: {args.name} was not registered; nothing to remove", file=sys.stderr)
            return 1
        print(f"removed {args.name} from {sources.config_path()} (its files are left alone)")
        return 0
    except (SourcesError, UpstreamNotFound, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        print(f"encred sources {args.verb}: {msg}", file=sys.stderr)
        return 2
