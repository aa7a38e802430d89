"""Wrong model names through VLMEvalKit's own entry points (issue 18, names).

VLMEvalKit's run.py wraps each (model, dataset) in ``except Exception``: an unknown name used to
end in a logged ``KeyError`` and exit status 0.  A name that looks like one of ours (a registered
base's prefix, ``_mask_``, close to one of our names) now stops the process with our message --
what was asked, why it is wrong, the canonical order, the nearest valid names -- and a non-zero
exit, before any weights load.  Real subprocesses of the installed VLMEvalKit (ms-vlmeval);
an upstream checkout's ``python run.py`` takes the same path (argv[0] is ``run.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import SMOKE_DATA, explain, run_py, vlmeval_env

pytest.importorskip("vlmeval")

BASE = "deepseek_vl_tiny_random"  # encoders (siglip, sam); a CPU model, so a wrong guard would load it


def _stopped(proc, work: Path, name: str, *expect: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, explain(proc)
    assert f"vlmeval-encred: model {name!r} is not registered" in out, explain(proc)
    for e in expect:
        assert e in out, (e, explain(proc))
    assert "Stopped before loading any weights" in out
    assert "masked=" not in out, "a wrapper was built: " + out[-3000:]  # our wrappers log masked=... on load
    preds = list(work.rglob("*.xlsx")) if work.exists() else []
    assert not preds, preds


def test_python_m_vlmeval_wrong_order(tmp_path, lmu_data):
    name = f"{BASE}_mask_sam_siglip"
    work = tmp_path / "outputs"
    proc = run_py(["-m", "vlmeval", "--model", name, "--data", SMOKE_DATA, "--judge", "exact_matching",
                   "--work-dir", str(work)], tmp_path, vlmeval_env(lmu_data))
    _stopped(proc, work, name, "canonical order siglip_sam", f"use '{BASE}_mask_siglip_sam'")
    assert not (work / name).exists()  # stopped before run.py made the model's folder


def test_run_py_misspelt_encoder(tmp_path, lmu_data):
    script = tmp_path / "run.py"  # like an upstream checkout's run.py
    script.write_text("from vlmeval.run import main\n\nif __name__ == '__main__':\n    main()\n")
    name = f"{BASE}_mask_sigclip"
    work = tmp_path / "outputs"
    proc = run_py([str(script), "--model", name, "--data", SMOKE_DATA, "--judge", "exact_matching",
                   "--work-dir", str(work)], tmp_path, vlmeval_env(lmu_data))
    _stopped(proc, work, name, "no encoder 'sigclip' (did you mean 'siglip'?)", "canonical order: siglip_sam",
             f"nearest valid names: {BASE}_mask_siglip")


def test_repeated_encoder_stops_before_the_valid_model_before_it(tmp_path, lmu_data):
    good, bad = f"{BASE}_mask_sam", f"{BASE}_mask_sam_sam"
    work = tmp_path / "outputs"
    proc = run_py(["-m", "vlmeval", "--model", good, bad, "--data", SMOKE_DATA, "--judge", "exact_matching",
                   "--work-dir", str(work)], tmp_path, vlmeval_env(lmu_data))
    _stopped(proc, work, bad, "'sam' is listed more than once", f"use '{BASE}_mask_sam'")
    assert not (work / good).exists()  # the valid model listed first did not run either


def test_guard_without_argv_check_still_exits_non_zero(tmp_path, lmu_data):
    """A launcher that calls main() with its own argv (not run.py / -m vlmeval): the lookup in
    supported_VLM itself raises our SystemExit, which run.py's ``except Exception`` lets through."""
    name = "eagle_x5_mask_sam_clip"
    script = tmp_path / "my_launcher.py"
    script.write_text("import sys\nfrom vlmeval.run import main\n\n"
                      f"sys.argv = ['x', '--model', {name!r}, '--data', {SMOKE_DATA!r}, '--judge', 'exact_matching',"
                      f" '--work-dir', {str(tmp_path / 'outputs')!r}]\nmain()\n")
    proc = run_py([str(script)], tmp_path, vlmeval_env(lmu_data))
    _stopped(proc, tmp_path / "outputs", name, "use 'eagle_x5_mask_clip_sam'")


def test_other_unknown_names_are_left_to_vlmevalkit(tmp_path, lmu_data):
    """Pins what docs/failure-modes.md says we do not intercept: a name unlike ours keeps
    VLMEvalKit's own behaviour (logged KeyError, exit status 0)."""
    work = tmp_path / "outputs"
    proc = run_py(["-m", "vlmeval", "--model", "NotAModelAtAll-7B", "--data", SMOKE_DATA, "--judge",
                   "exact_matching", "--work-dir", str(work)], tmp_path, vlmeval_env(lmu_data))
    out = proc.stdout + proc.stderr
    assert "vlmeval-encred: model" not in out
    assert proc.returncode == 0 and "KeyError" in out, explain(proc)


# --- in process: the guard's pieces ----------------------------------------------------------

def test_guarded_models_dict_semantics():
    from vlmeval_encred.vlmeval_plugin import GuardedModels, UnknownModelName

    d = GuardedModels({"Qwen-VL": 1})
    assert d["Qwen-VL"] == 1 and d.get("eagle_x5_mask_sam_clip") is None and "eagle_x5_mask_x" not in d
    with pytest.raises(KeyError):
        d["Qwen-VLX"]  # not ours: a plain KeyError as before
    with pytest.raises(UnknownModelName, match="use 'eagle_x5_mask_clip_sam'") as exc:
        d["eagle_x5_mask_sam_clip"]
    assert not isinstance(exc.value, Exception)  # passes through run.py's `except Exception`


@pytest.mark.parametrize("name, ours", [
    ("eagle_x5_mask_sam_clip", True), ("Eagle_X5-mask-clip", True), ("eagle_x5_13", True),
    ("eagel_x5", True), ("cambrian1_8b_mask_dino", True), ("GPT4o", False), ("Qwen2-VL-7B-Instruct", False),
])
def test_looks_like_ours(name, ours):
    from vlmeval_encred.vlmeval_plugin import looks_like_ours

    assert looks_like_ours(name, ["GPT4o", "Qwen2-VL-7B-Instruct", "Eagle-X5-7B"]) is ours


def test_registered_name_whose_family_failed_to_import(monkeypatch):
    """New case: a family whose wrapper cannot be imported here is missing from supported_VLM; its
    names used to end in the same bare KeyError (exit 0).  Now: what failed, and `encred doctor`."""
    from vlmeval_encred import vlmeval_plugin as vp

    monkeypatch.setitem(vp._FAILED_WRAPPERS, "eagle_x5", "m:C: ImportError: no module named eagle")
    with pytest.raises(vp.UnknownModelName) as exc:
        vp.GuardedModels()["eagle_x5_mask_clip"]
    msg = str(exc.value)
    assert "family was not registered in this environment" in msg and "ImportError" in msg and "encred doctor" in msg


@pytest.mark.parametrize("argv, orig, models", [
    (["/x/VLMEvalKit/run.py", "--model", "a", "b", "--data", "d"], None, ["a", "b"]),
    (["/site/vlmeval/__main__.py", "--data", "d", "--model=a"], None, ["a"]),
    (["-m", "--model", "a"], ["python", "-m", "vlmeval", "--model", "a"], ["a"]),
    (["/site/pytest/__main__.py", "--model", "a"], None, None),
    (["/bin/encred", "sweep", "--model", "a"], None, None),
])
def test_vlmeval_cli_detection(monkeypatch, argv, orig, models):
    from vlmeval_encred import vlmeval_plugin as vp

    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig or ["python", *argv], raising=False)
    args = vp._vlmeval_cli_args()
    assert (None if args is None else vp._models_in(args)) == models
