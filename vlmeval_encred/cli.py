"""``encred``: the command line of vlmeval-encred.

Subcommands are small modules; each registers itself in :data:`COMMANDS` via
``add_parser(subparsers)`` and is imported lazily, so ``encred --help`` and
``encred models`` stay fast (no torch, no vlmeval).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module that defines add_parser(subparsers) and run(args) -> int
COMMANDS: dict[str, str] = {
    "models": "vlmeval_encred.commands.models",
    "report": "vlmeval_encred.commands.report",
    "demo": "vlmeval_encred.commands.demo",
    "sweep": "vlmeval_encred.commands.sweep",
    "status": "vlmeval_encred.commands.status",
    "profile": "vlmeval_encred.commands.profile",
    "doctor": "vlmeval_encred.commands.doctor",
    "rank": "vlmeval_encred.commands.rank",
    "sources": "vlmeval_encred.commands.sources",
}

DESCRIPTION = """\
Measure what each vision encoder of a multi-encoder MLLM contributes, with VLMEvalKit.

Installing this package registers masked-encoder variants of real checkpoints as
ordinary VLMEvalKit model names (<base>, <base>_mask_<enc>[_<enc>...]), so
`python run.py --model eagle_x5_mask_clip --data ChartQA_TEST` works unchanged.
`encred report` turns VLMEvalKit's result files into CUR/IG, Shapley values,
capacity/necessity and bootstrap intervals.  Set VLMEVAL_ENCRED_DISABLE=1 to
hide the models from VLMEvalKit.
"""


def build_parser() -> argparse.ArgumentParser:
    from .validate import OneLineParser

    parser = OneLineParser(
        prog="encred", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"vlmeval-encred {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # subcommand not shipped in this build
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # e.g. `encred sweep --gpus N` re-runs it under torchrun
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `encred models | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
