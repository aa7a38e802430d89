"""On-disk cache of parsed per-sample scores and of bootstrap results, so a repeated report is quick.

``encred report`` is meant to be re-run after every finished variant (docs/report.md),
and most of its time goes into parsing the same per-sample sheets again.  A parsed
sheet (:class:`~.scores.Units`) is stored under a key made of

* the file's resolved path, size, modification time (ns) and inode: any rewrite of the
  file, including VLMEvalKit's atomic replace, gives a new key (an *invalidation* is
  simply a miss; stale entries are never read);
* the suite's per-sample and headline specs (a changed rule or scale is a new key);
* :data:`VERSION`, bumped whenever :func:`.scores.per_sample` changes what it computes.

The bootstrap is keyed by the keys of all its inputs plus the point estimates, the
seed, the number of resamples and the category structure.

Entries are ``.npz`` (``allow_pickle=False``) and JSON files written to a temporary name
and moved into place with ``os.replace``, so a concurrent or killed run never leaves a
half-written entry, and a cache directory shared between users cannot execute code.
Location: ``$ENCRED_SCORE_CACHE`` (``off`` disables it), else
``$XDG_CACHE_HOME/vlmeval-encred/report`` (``~/.cache/vlmeval-encred/report``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .scores import Units

VERSION = 1
ENV_VAR = "ENCRED_SCORE_CACHE"
OFF = ("off", "0", "no", "false", "")


def default_dir() -> Path | None:
    """``$ENCRED_SCORE_CACHE``, ``None`` when it says ``off``, else the user cache directory."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return None if env.strip().lower() in OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vlmeval-encred" / "report"


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()


def file_key(path: Path, *spec: Any) -> str | None:
    """Key of ``path`` as it is now (``None`` if it cannot be stat'ed: never cached)."""
    try:
        st = path.stat()
        real = str(path.resolve())
    except OSError:
        return None
    return _digest(["units", VERSION, real, st.st_size, st.st_mtime_ns, st.st_ino, [repr(s) for s in spec]])


def _atomic(target: Path, write: Callable[[Any], None], mode: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class ScoreCache:
    """Get/put parsed per-sample units and bootstrap outputs; ``root=None`` disables caching."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0
        self.errors: list[str] = []

    @classmethod
    def default(cls) -> "ScoreCache":
        return cls(default_dir())

    def _path(self, key: str, ext: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.{ext}"

    def units(self, path: Path, spec: Any, headline_spec: Any, parse: Callable[[], Units]) -> tuple[Units, str | None]:
        """``parse()``'s result for ``path``, from the cache when the file is unchanged; and its key."""
        key = file_key(path, spec, headline_spec) if self.root is not None else None
        if key is None:
            return parse(), None
        p = self._path(key, "npz")
        try:
            with np.load(p, allow_pickle=False) as z:
                u = Units(z["ids"].astype(object), z["x"], z["w"], float(z["norm"]))
            self.hits += 1
            return u, key
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError) as exc:  # a damaged entry: recompute and replace it
            self.errors.append(f"{p}: {type(exc).__name__}: {exc}")
        self.misses += 1
        u = parse()
        try:
            _atomic(p, lambda f: np.savez(f, ids=np.asarray(u.ids, dtype=str), x=u.x, w=u.w,
                                          norm=np.float64(u.norm)), "wb")
        except OSError as exc:  # a read-only or full cache must not stop the report
            self.errors.append(f"{p}: not written ({type(exc).__name__}: {exc})")
        return u, key

    def json_entry(self, parts: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` (JSON-serialisable), cached under a digest of ``parts``."""
        if self.root is None:
            return compute()
        p = self._path(_digest(["json", VERSION, parts]), "json")
        try:
            out = json.loads(p.read_text(encoding="utf-8"))
            self.hits += 1
            return out
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            self.errors.append(f"{p}: {type(exc).__name__}: {exc}")
        self.misses += 1
        out = compute()
        try:
            _atomic(p, lambda f: json.dump(out, f), "w")
        except OSError as exc:
            self.errors.append(f"{p}: not written ({type(exc).__name__}: {exc})")
        return out
