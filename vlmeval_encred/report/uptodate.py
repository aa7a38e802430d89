"""Skip rewriting a report whose content and files are unchanged (the cheap refresh loop).

``encred report`` is re-run after every variant and in loops over a running sweep; when
no result file changed, the tables are identical and writing the workbook and drawing
the figures again (about 2 s, most of a warm run) buys nothing.  After a write we
store a digest of the report's content (``ReportResult.to_dict()`` without timings and
paths) in :data:`STAMP`; the next run skips writing only if the digest is the same *and*
every output file is still present and unchanged against the manifest's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .writers import MANIFEST, _sha

STAMP = ".encred-report-content.json"
_VOLATILE = ("timings", "files", "out_dir")


def content_digest(result: Any, names: list[str]) -> str:
    d = {k: v for k, v in result.to_dict().items() if k not in _VOLATILE}
    blob = json.dumps([d, sorted(names)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def is_current(out: Path, names: list[str], digest: str) -> bool:
    try:
        stamp = json.loads((out / STAMP).read_text())
        manifest = dict(json.loads((out / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if stamp.get("digest") != digest or set(manifest) != set(names):
        return False
    try:
        return all(_sha(out / n) == manifest[n] for n in names)
    except OSError:
        return False


def mark(out: Path, digest: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".stamp.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w") as f:
        json.dump({"tool": "vlmeval-encred report", "digest": digest}, f)
    os.replace(tmp, out / STAMP)
