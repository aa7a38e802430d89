"""``encred doctor``: is this environment fit for the GPU-hours you are about to spend?

It reports the VLMEvalKit in use (flavour, version or commit, output layout),
torch/transformers, and per family: where its upstream code comes from, whether it
imports here, whether the environment matches the family's tested recipe, and a
self-test on a tiny random model built from the real upstream classes (masked
towers never called, zero equals run-then-zero, drop equals zero where claimed,
parameters freed).  The checks are :func:`vlmeval_encred.realcode.checks.run_selftest`,
the same the test suite runs.  Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..validate import int_range, nearest


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor", help="check VLMEvalKit, package versions and each family's real upstream code here",
        description="Check this environment before a long run: the VLMEvalKit flavour and version, "
                    "torch/transformers, and per family whether its upstream code imports, whether the "
                    "environment matches the tested recipe (vlmeval_encred/recipes), and a self-test "
                    "of every masking mode on a tiny random model built from the real upstream classes. "
                    "Exits 1 if anything fails.")
    p.add_argument("--family", action="append", default=None,
                   help="only this family (repeatable); default: every family with a self-test")
    p.add_argument("--subsets", type=int_range(1), default=None, metavar="N",
                   help="check only N encoder subsets per family (singles first, then the largest); "
                        "default: every subset")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "vlmeval-encred"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _vlmeval() -> dict[str, Any]:
    try:
        from ..flavour import detect

        found = detect()
        return {"ok": True, **(dataclasses.asdict(found) if dataclasses.is_dataclass(found) else dict(found))}
    except Exception as exc:  # noqa: BLE001 - a broken VLMEvalKit is exactly what we report
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def family_report(family: str, subsets: int | None = None, progress=None) -> dict[str, Any]:
    """Everything doctor says about one family, as plain data (also used by the tests)."""
    from ..realcode import load_selftest
    from ..realcode.checks import run_selftest
    from ..recipes import mismatches

    test = load_selftest(family)
    report: dict[str, Any] = {"family": family, "recipe": test.recipe}
    try:
        report["recipe_mismatches"] = mismatches(test.recipe) if test.recipe else []
    except KeyError as exc:
        report["recipe_mismatches"] = [str(exc)]
    with tempfile.TemporaryDirectory(prefix=f"encred-doctor-{family}-") as tmp:
        results = run_selftest(test, Path(tmp), limit=subsets, progress=progress)
    report["checks"] = [dataclasses.asdict(r) for r in results]
    failed = [r for r in results if not r.ok]
    report["ok"] = not failed and not report["recipe_mismatches"]
    if report["recipe_mismatches"] and not failed:
        report["note"] = "self-test passed, but this environment is not the tested recipe"
    return report


def run(args: argparse.Namespace) -> int:
    from .. import upstream
    from ..realcode import SELFTESTS

    families = args.family or list(SELFTESTS)
    unknown = [f for f in families if f not in SELFTESTS]
    if unknown:
        near = {u: nearest(u, SELFTESTS) for u in unknown}
        raise SystemExit("encred doctor: --family: " + "; ".join(
            f"no self-test for family {u}" + (f" (nearest valid: {', '.join(near[u])})" if near[u] else "")
            for u in unknown) + f"; families with one: {', '.join(SELFTESTS)}")
    say = (lambda *_a, **_k: None) if args.json else print
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        rows = upstream.table()
        out: dict[str, Any] = {"versions": _versions(), "vlmeval": _vlmeval(),
                               "sources": [dataclasses.asdict(r) for r in rows]}
    say("VLMEvalKit: " + (", ".join(f"{k}={v}" for k, v in out["vlmeval"].items() if k != "ok" and v not in (None, ""))))
    say("versions:   " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()))
    say("upstream sources (encred sources list):\n" + upstream.format_table(rows))
    out["families"] = []
    for fam in families:
        say(f"\n== {fam}")
        # Upstream code prints (loaders, state dicts): keep stdout for the JSON document alone.
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            rep = family_report(fam, args.subsets, progress=None)
        out["families"].append(rep)
        for line in rep["recipe_mismatches"]:
            say(f"[FAIL] {fam} recipe {rep['recipe']}: {line}")
        if not rep["recipe_mismatches"]:
            say(f"[ok] {fam} recipe {rep['recipe']}: this environment matches")
        for c in rep["checks"]:
            if not c["ok"] or c["check"] in ("imports", "build", "done"):
                say(f"[{'ok' if c['ok'] else 'FAIL'}] {fam} {c['check']} {c['subject']}"
                    + (f": {c['detail']}" if c["detail"] else ""))
    ok = out["vlmeval"]["ok"] and all(f["ok"] for f in out["families"])
    out["ok"] = ok
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        bad = [f["family"] for f in out["families"] if not f["ok"]]
        say("\n" + ("all checks passed" if ok else
                    f"FAILED: {', '.join(bad) or 'VLMEvalKit'} (see the [FAIL] lines; docs/masking.md gives each "
                    "family's tested environment)"))
    return 0 if ok else 1
