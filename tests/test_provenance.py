"""Provenance sidecars (vlmeval_encred/provenance.py) and the report's consistency warnings
(vlmeval_encred/report/provenance.py), without VLMEvalKit runs; the end-to-end checks (sidecars
written by VLMEvalKit's inference and by the sweep, carried over by upstream --reuse, a report
over two VLMEvalKit versions) are in tests/test_vlmeval_flavours.py."""

from __future__ import annotations

import json

import pytest

from vlmeval_encred import provenance as P
from vlmeval_encred.report import provenance as RP

pytestmark = [pytest.mark.envs("base", "vlmeval_checkout"),
              pytest.mark.realcode("vlmevalkit", envs=("vlmeval_checkout",))]


def test_sidecar_is_written_atomically_beside_the_prediction(tmp_path):
    pred = tmp_path / "T20260101-000000" / "m_D.xlsx"
    pred.parent.mkdir()
    rec = P.record(pred, writer="test", entry_name="encred_tiny_mask_hires", fp=P.fingerprint([1, 2], ["A", "B"]))
    path = P.write(pred, rec)
    assert path == pred.parent / "encred_provenance" / "m_D.json"
    assert [p.name for p in path.parent.iterdir()] == ["m_D.json"]  # no temporary file left
    back = P.read(pred.with_suffix(".tsv"))  # keyed by the stem: any prediction format
    assert back["masked"] == ["hires"] and back["mode"] == "zero" and back["checkpoint"] == "encred-demo:default"
    assert back["plugin"] and back["torch"] and back["transformers"] and back["vlmeval"]
    assert P.read(tmp_path / "other_D.xlsx") is None


def test_fingerprint_depends_on_pairs_not_on_types():
    assert P.fingerprint([0, 1], ["A", 3]) == P.fingerprint(["0", "1"], ["A", "3"])
    assert P.fingerprint([0, 1], ["A", "B"]) != P.fingerprint([0, 1], ["B", "A"])


def _cell(variant, bench, **prov):
    base = {k: "unknown" for k in RP.SHEET_KEYS}
    base.update(prov)
    base["sidecar"] = "no" if all(v == "unknown" for v in prov.values()) else "yes"
    return {"variant": variant, "benchmark": bench, "status": "ok", "provenance": base}


def test_warnings_name_the_mixed_cells_and_the_affected_curs():
    cells = [_cell("m", "A", vlmeval="v1", dtype="bfloat16", mode="zero", transformers="4.44"),
             _cell("m_mask_x", "A", vlmeval="v2", dtype="bfloat16", mode="zero", transformers="4.44"),
             _cell("m_mask_y", "A", vlmeval="v1", dtype="float16", mode="zero", transformers="4.44"),
             _cell("m", "B", vlmeval="v1", dtype="bfloat16", mode="zero", transformers="4.44"),
             _cell("m_mask_x", "B")]
    w = RP.warnings(cells, "m", {"x": "m_mask_x", "y": "m_mask_y"})
    text = "\n".join(w)
    assert "mixes VLMEvalKit versions: v1: m/A, m/B, m_mask_y/A; v2: m_mask_x/A" in text, text
    assert "CUR(x) on A (m: v1; m_mask_x: v2)" in text and "CUR(x) on B" not in text  # B: unknown cell
    assert "mixes dtypes" in text and "CUR(y) on A (m: bfloat16; m_mask_y: float16)" in text
    assert "transformers" not in text and "mask modes" not in text
    assert "1 of 5 cells have no provenance record (unknown set-up): m_mask_x/B" in text


def test_one_setup_gives_no_warning_and_the_sheet_has_a_row_per_cell():
    cells = [_cell(v, "A", vlmeval="v1", dtype="bfloat16", mode="zero", transformers="4.44")
             for v in ("m", "m_mask_x")]
    assert RP.warnings(cells, "m", {"x": "m_mask_x"}) == []
    name, header, rows = RP.sheet(cells)
    assert name == "Provenance" and header[:4] == ["variant", "benchmark", "sidecar", "vlmeval"]
    assert [r[:4] for r in rows] == [["m", "A", "yes", "v1"], ["m_mask_x", "A", "yes", "v1"]]
    json.dumps(rows)
