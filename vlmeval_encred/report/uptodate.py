"""Skip rewriting a report whose content and files are unchanged (the cheap refresh loop).

``encred report`` is re-run after every variant and in loops over a running sweep; when
no result file changed, the tables are identical and writing the workbook and drawing
the figures again (about 2 s, most of a warm run) buys nothing.  After a write we
store a digest of the report's content (``ReportResult.to_dict()`` without timings and
paths) in :data:`STAMP`, per output set (several reports may share a folder); the next
run skips writing only if the digest is the same *and* every output file of that set
is still present and unchanged against the manifest's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..safe_files import Manifest, OutputError, atomic_write_text
from .writers import _sha

STAMP = ".encred-report-content.json"
_VOLATILE = ("timings", "files", "out_dir")


def content_digest(result: Any, names: list[str]) -> str:
    d = {k: v for k, v in result.to_dict().items() if k not in _VOLATILE}
    blob = json.dumps([d, sorted(names)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stamps(out: Path) -> dict[str, str]:
    try:
        raw = json.loads((out / STAMP).read_text())
        return {str(k): str(v) for k, v in dict(raw.get("digests", {})).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def is_current(out: Path, output_set: str, names: list[str], digest: str) -> bool:
    if _stamps(out).get(output_set) != digest:
        return False
    try:
        manifest = Manifest.load(out)
    except OutputError:
        return False
    if set(manifest.sets.get(output_set, [])) != set(names):
        return False
    try:
        return all(_sha(out / n) == manifest.files[n] for n in names)
    except (OSError, KeyError):
        return False


def mark(out: Path, output_set: str, digest: str) -> None:
    d = _stamps(out)
    d[output_set] = digest
    try:
        atomic_write_text(out / STAMP, json.dumps({"tool": "vlmeval-encred report", "digests": d}))
    except OutputError:
        pass  # only an optimisation: the next run rewrites the (identical) report
