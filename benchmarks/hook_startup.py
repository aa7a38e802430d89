"""Start-up cost of the .pth hook for an interpreter that never imports vlmeval.

Two figures, both measured in this run:

1. ``-X importtime`` of ``vlmeval_encred._import_hook`` (what the .pth imports) in a
   fresh interpreter, plus the time of ``install()`` itself;
2. wall time of ``python -c pass`` with the hook active versus the same interpreter
   with the hook switched off by ``VLMEVAL_ENCRED_DISABLE=1`` (the .pth still runs
   but installs nothing) and versus ``python -S`` (no site processing at all:
   a lower bound, it also skips every other .pth).

Target (issue 2): under 5 ms over a bare interpreter.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

N = int(os.environ.get("N", "40"))


def wall(args: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(N):
        t = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    env = dict(os.environ)
    env.pop("VLMEVAL_ENCRED_DISABLE", None)
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], env=env,
                         capture_output=True, text=True, check=True).stderr
    ours = [ln for ln in out.splitlines() if ln.split("|")[-1].strip().startswith("vlmeval_encred")]
    cum_us = max(int(ln.split("|")[1]) for ln in ours) if ours else 0
    probe = ("import time,sys;t=time.perf_counter();import vlmeval_encred._import_hook as h;h.install();"
             "print((time.perf_counter()-t)*1e6)")
    inst = float(subprocess.run([sys.executable, "-S", "-c", f"import sys;sys.path[:0]={sys.path!r};" + probe],
                                env=env, capture_output=True, text=True, check=True).stdout)
    on = wall(["-c", "pass"], env)
    off = wall(["-c", "pass"], {**env, "VLMEVAL_ENCRED_DISABLE": "1"})
    bare = wall(["-S", "-c", "pass"], env)
    print(f"import of the hook module (-X importtime, cumulative): {cum_us / 1000:.3f} ms")
    print(f"import + install() measured in-process:               {inst / 1000:.3f} ms")
    print(f"python -c pass, hook active     (median of {N}): {on:.2f} ms")
    print(f"python -c pass, hook disabled   (median of {N}): {off:.2f} ms  (active - disabled = {on - off:+.2f} ms)")
    print(f"python -S -c pass, no site      (median of {N}): {bare:.2f} ms  (active / bare = {on / bare:.2f}x)")
    cost = max(cum_us / 1000, inst / 1000)
    print(f"hook cost over a bare interpreter: {cost:.2f} ms; target < 5 ms -> {'met' if cost < 5 else 'NOT met'}")
    print("(wall times include site's other .pth files, e.g. setuptools' editable finder in an editable install)")


if __name__ == "__main__":
    main()
