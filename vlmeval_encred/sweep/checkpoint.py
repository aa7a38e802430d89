"""Kill-safe sweep progress: one append-only JSON-lines file per (base, dataset).

Each line is one finished sample: ``{"index": "<str(index)>", "preds": {variant: text}}``.
Appending a line and flushing is the unit of progress, so a kill loses at most
the sample in flight; a torn last line (kill during the write) is ignored on
load.  Rewriting a growing pickle every N samples would cost O(N^2) I/O over a
10k-sample benchmark times 32 variants; appending costs O(1) per sample.
``fsync`` every ``sync_every`` lines bounds what a power loss can take.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


def checkpoint_path(work_dir: str | os.PathLike, base: str, dataset: str, tag: str = "") -> Path:
    """``<work_dir>/<base>/encred_sweep/<base>_<dataset>.jsonl`` (beside the base's own results);
    ``<base>_<dataset>@<tag>.jsonl`` for a tagged sweep (a cluster shard), so that shards of one
    dataset never share a checkpoint (the first to finish would delete the others')."""
    name = f"{base}_{dataset}@{tag}.jsonl" if tag else f"{base}_{dataset}.jsonl"
    return Path(work_dir) / base / "encred_sweep" / name


def parse_checkpoint_name(base: str, filename: str) -> tuple[str, str] | None:
    """(dataset, tag) of a checkpoint file name of ``base``, or None."""
    if not (filename.startswith(base + "_") and filename.endswith(".jsonl")):
        return None
    stem = filename[len(base) + 1:-len(".jsonl")]
    ds, _, tag = stem.partition("@")
    return ds, tag


@dataclass
class SweepCheckpoint:
    path: Path
    sync_every: int = 10
    done: dict[str, dict[str, str]] = field(default_factory=dict)
    torn_lines: int = 0
    _fh: object = None
    _since_sync: int = 0

    @classmethod
    def open(cls, path: Path, sync_every: int = 10) -> "SweepCheckpoint":
        ck = cls(Path(path), sync_every)
        if ck.path.exists():
            with open(ck.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        key, preds = str(rec["index"]), dict(rec["preds"])
                    except (ValueError, KeyError, TypeError):
                        ck.torn_lines += 1  # only a kill mid-write produces these
                        continue
                    ck.done.setdefault(key, {}).update(preds)
        return ck

    def get(self, index: object) -> dict[str, str]:
        return self.done.get(str(index), {})

    def add(self, index: object, preds: dict[str, str]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.torn_lines and self.path.exists():
                self._rewrite()
            self._fh = open(self.path, "a", encoding="utf-8")
        line = json.dumps({"index": str(index), "preds": preds}, ensure_ascii=False)
        self._fh.write(line + "\n")
        self._fh.flush()
        self.done.setdefault(str(index), {}).update(preds)
        self._since_sync += 1
        if self._since_sync >= self.sync_every:
            os.fsync(self._fh.fileno())
            self._since_sync = 0

    def _rewrite(self) -> None:
        """Drop torn lines so that appends start on a clean line (tmp + os.replace)."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for key, preds in self.done.items():
                fh.write(json.dumps({"index": key, "preds": preds}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self.torn_lines = 0

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        self.close()
        if self.path.exists():
            self.path.unlink()
