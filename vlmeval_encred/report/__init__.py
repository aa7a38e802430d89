"""The report step: VLMEvalKit result files of masked variants -> CUR/IG, Shapley, bootstrap.

Modules, one job each: ``schema`` (suite schema), ``reader`` (find result files),
``scores`` (headline and per-sample extraction), ``metrics``, ``bootstrap``,
``writers``, ``pipeline`` (glue) and ``api`` (:func:`build_report`).
"""

from .api import ReportError, ReportResult, build_report

__all__ = ["ReportError", "ReportResult", "build_report"]
