"""Print CI's closing table: per environment and upstream source, how many real-code tests ran and
against which copy, or that this machine has no such source.  Reads the JSON lines the test runs
append to ENCRED_REALCODE_LOG (tests/conftest.py) and the rows .ci/run adds for environments it
could not build for want of a source.  Usage: python tests/realcode_table.py LOG"""

from __future__ import annotations

import json
import sys


def main(path: str) -> int:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    head = f"{'environment':<17} {'source':<12} {'used by':<24} {'ran':>4} {'failed':>6} {'not run':>7}  copy"
    print(head)
    print("-" * len(head))
    for r in rows:
        ran = r.get("passed", 0) + r.get("failed", 0)
        copy = f"{r['path']} @ {r['commit'][:12]}" if r.get("path") else "no source on this machine"
        print(f"{r['env']:<17} {r['source']:<12} {r.get('used_by', ''):<24} {ran:>4} {r.get('failed', 0):>6} "
              f"{r.get('not run', 0):>7}  {copy}")
    if not any(r.get("path") for r in rows):
        print("\nNo upstream source is registered on this machine: every family ran on its stand-ins, "
              "transformers' own classes and the ms-vlmeval wheel only (encred sources list).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
