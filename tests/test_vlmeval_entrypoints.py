"""A registered masked variant runs through VLMEvalKit's own entry points, unchanged.

Real subprocesses of the installed VLMEvalKit (`python -m vlmeval`, a run.py-style
script in a directory without vlmeval, `--config` with our wrapper class) on a small
local dataset; the model is a tiny random DeepseekVLHybrid built offline, so the
answers are noise but every VLMEvalKit code path (inference, prediction file,
evaluation, score file) is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import SMOKE_DATA, SMOKE_MODEL, explain, run_py, vlmeval_env


def _assert_outputs(work: Path, model: str, data: str) -> None:
    mdir = work / model
    assert mdir.is_dir(), f"no output dir for {model}: {sorted(p.name for p in work.iterdir())}"
    files = sorted(p.relative_to(mdir).as_posix() for p in mdir.rglob("*") if p.is_file())
    preds = [f for f in files if f.endswith(f"{model}_{data}.xlsx")]
    scores = [f for f in files if f.endswith(f"{model}_{data}_acc.csv")]
    assert preds and scores, f"missing prediction/score files for {model}: {files}"
    pred = pd.read_excel(mdir / preds[0])
    assert len(pred) == 4 and "prediction" in pred.columns
    acc = pd.read_csv(mdir / scores[0])
    assert "Overall" in acc.columns and 0.0 <= float(acc["Overall"].iloc[0]) <= 1.0


def test_python_m_vlmeval_runs_masked_variant(tmp_path, lmu_data):
    work = tmp_path / "outputs"
    proc = run_py(["-m", "vlmeval", "--model", SMOKE_MODEL, "--data", SMOKE_DATA,
                   "--judge", "exact_matching", "--work-dir", str(work)], tmp_path, vlmeval_env(lmu_data))
    assert proc.returncode == 0, explain(proc)
    _assert_outputs(work, SMOKE_MODEL, SMOKE_DATA)


def test_run_py_style_script_and_config_with_wrapper_class(tmp_path, lmu_data):
    # Like an upstream checkout's run.py, but in a directory that holds no vlmeval package:
    # vlmeval comes from site-packages and the hook must still register before main() runs.
    script = tmp_path / "run.py"
    script.write_text("from vlmeval.run import main\n\nif __name__ == '__main__':\n    main()\n")
    cfg = {
        "model": {"my_tiny_no_siglip": {"class": "EncredDeepseekVLHybrid",
                                        "model_path": "encred-tiny:deepseek-vl-hybrid",
                                        "mask": ["siglip"], "torch_dtype": "float32", "device": "cpu",
                                        "max_new_tokens": 4}},
        "data": {SMOKE_DATA: {"class": "CustomMCQDataset", "dataset": SMOKE_DATA}},
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    work = tmp_path / "outputs"
    proc = run_py([str(script), "--config", "cfg.json", "--judge", "exact_matching",
                   "--work-dir", str(work)], tmp_path, vlmeval_env(lmu_data))
    assert proc.returncode == 0, explain(proc)
    _assert_outputs(work, "my_tiny_no_siglip", SMOKE_DATA)
    log = proc.stdout + proc.stderr
    assert "masked=siglip mode=zero" in log, log[-3000:]


# Paper short names (aliases of the official datasets) and official names behaving as before:
# tests/test_vlmeval_flavours.py, on both ms-vlmeval and the upstream checkout.
