"""Where each prediction file came from: a small JSON sidecar per prediction file.

A CUR compares cells; if one cell was produced by another VLMEvalKit version
(whose answer extraction differs), another transformers, dtype or mask mode,
the CUR measures that difference instead of the encoder.  So every prediction
file that our wrappers (through VLMEvalKit's inference) or ``encred sweep``
write gets ``<folder>/encred_provenance/<prediction stem>.json``:

plugin version, VLMEvalKit flavour/version/commit, torch and transformers
versions, dtype, device, masked encoders and mask mode, checkpoint (and its
revision when known), the command, and a fingerprint of the (index,
prediction) pairs.  The fingerprint lets a later ``run.py --reuse`` that
copies the prediction into a new run folder carry the record along (see
:func:`carry_over`).  The sidecar lives in a sub-folder so that VLMEvalKit's
file matching (``<model>_<dataset>*`` files) and ``encred status`` never take
it for a result.  Written atomically; never required: a cell without one is
"unknown", not an error.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

SIDECAR_DIR = "encred_provenance"
SCHEMA = 1
FIELDS = ("plugin", "vlmeval", "torch", "transformers", "dtype", "device", "masked", "mode",
          "checkpoint", "revision", "command")
"""The keys shown per cell (the report's Provenance sheet), in order."""
CONSISTENCY_KEYS = ("vlmeval", "transformers", "dtype", "mode")
"""Keys that must agree across one CUR / lattice (the report warns otherwise)."""


def sidecar_path(pred_file: str | os.PathLike) -> Path:
    p = Path(pred_file)
    return p.parent / SIDECAR_DIR / (p.stem + ".json")


def fingerprint(indices: Iterable[Any], predictions: Iterable[Any]) -> str:
    """sha256 of the (index, prediction) pairs as text: equal for byte-different dumps of one table."""
    h = hashlib.sha256()
    for i, p in zip(indices, predictions):
        h.update(json.dumps([str(i), str(p)], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def fingerprint_file(pred_file: str | os.PathLike) -> str | None:
    """:func:`fingerprint` of a prediction file read with VLMEvalKit's own loader (None if unreadable)."""
    try:
        from vlmeval.smp import load

        data = load(str(pred_file))
        return fingerprint(data["index"], data["prediction"])
    except Exception:
        return None


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The process-wide part of a record (no model needed)."""
    from . import __version__
    from .flavour import installed

    fl = installed()
    return {
        "plugin": __version__,
        "vlmeval": fl.label if fl else None,
        "vlmeval_kind": fl.kind if fl else None,
        "vlmeval_version": fl.version if fl else None,
        "vlmeval_commit": (fl.commit or fl.based_on) if fl else None,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "python": sys.version.split()[0],
        "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
    }


def _torch_modules(obj: Any) -> list[Any]:
    try:
        import torch
    except ImportError:
        return []
    if isinstance(obj, torch.nn.Module):
        return [obj]
    return [v for v in vars(obj).values() if isinstance(v, torch.nn.Module)] if hasattr(obj, "__dict__") else []


def model_facts(model: Any, entry_name: str | None = None) -> dict[str, Any]:
    """dtype, device, mask, mode, checkpoint, revision of a loaded wrapper (what can be known)."""
    out: dict[str, Any] = {"model": entry_name, "dtype": None, "device": None, "masked": None, "mode": None,
                           "checkpoint": None, "revision": None}
    for m in _torch_modules(model):
        p = next(iter(m.parameters()), None)
        if p is not None:
            out["dtype"], out["device"] = str(p.dtype).replace("torch.", ""), str(p.device)
        cfg = getattr(m, "config", None)
        rev = getattr(cfg, "_commit_hash", None) if cfg is not None else None
        if rev:
            out["revision"] = rev
        if out["dtype"]:
            break
    report = getattr(model, "encred_report", None)
    if report is not None:
        out["masked"], out["mode"] = list(report.spec.masked), report.spec.mode
    if entry_name:
        try:
            from .registry import parse_entry_name

            e = parse_entry_name(entry_name)
            out["checkpoint"] = e.base.checkpoint
            if out["masked"] is None:
                out["masked"], out["mode"] = list(e.masked), e.base.modes[0]
        except Exception:
            pass
    return out


def record(pred_file: str | os.PathLike, *, writer: str, model: Any = None, entry_name: str | None = None,
           fp: str | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    rec = {"schema": SCHEMA, "writer": writer, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "prediction_file": Path(pred_file).name, "fingerprint": fp}
    rec.update(environment())
    rec.update(model_facts(model, entry_name))
    rec.update(extra or {})
    return rec


def write(pred_file: str | os.PathLike, rec: Mapping[str, Any]) -> Path:
    """Write the sidecar of ``pred_file`` atomically (temporary file + ``os.replace``)."""
    path = sidecar_path(pred_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(rec), indent=1, default=str))
    os.replace(tmp, path)
    return path


def read(pred_file: str | os.PathLike) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(pred_file).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def carry_over(pred_file: str | os.PathLike, search_dirs: Iterable[str | os.PathLike]) -> Path | None:
    """Give ``pred_file`` (reused, not re-inferred) the sidecar of the file it was copied from.

    Looks for a sidecar of the same prediction name with the same fingerprint in
    ``search_dirs`` (other run folders of the model); copies it with ``reused_from``.
    """
    pred_file = Path(pred_file)
    if read(pred_file) is not None:
        return None
    fp = fingerprint_file(pred_file)
    if fp is None:
        return None
    for d in search_dirs:
        src = Path(d) / pred_file.name
        rec = read(src)
        if rec and rec.get("fingerprint") == fp and src.resolve() != pred_file.resolve():
            rec = dict(rec, reused_from=str(Path(d).name), reused_by=environment()["command"])
            return write(pred_file, rec)
    return None


def after_inference(pred_file: str, model: Any, model_name: str, dataset_name: str, run_dirs: list[str]) -> None:
    """Called after VLMEvalKit's ``infer_data_job`` wrote ``pred_file`` (see vlmeval_plugin)."""
    if not os.path.exists(pred_file):
        return
    if isinstance(model, str) or model is None:  # nothing inferred here: predictions were reused
        carry_over(pred_file, run_dirs)
        return
    from .wrapper import EncredMixin

    if not isinstance(model, EncredMixin):
        return  # not one of ours: VLMEvalKit's own models get no sidecar
    write(pred_file, record(pred_file, writer="vlmeval", model=model, entry_name=model_name,
                            fp=fingerprint_file(pred_file), extra={"dataset": dataset_name}))
