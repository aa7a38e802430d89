"""The start-up hook: VLMEvalKit, unchanged, sees our models in fresh interpreters.

Everything here runs VLMEvalKit's real import machinery in subprocesses; nothing of
VLMEvalKit is mocked.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

from conftest import ROOT, explain, run_py, vlmeval_env

PROBE = textwrap.dedent("""
    import json, sys
    before = {"vlmeval": "vlmeval" in sys.modules, "torch": "torch" in sys.modules,
              "finder": any(type(f).__name__ == "EncredFinder" for f in sys.meta_path)}
    import vlmeval.config as cfg, vlmeval.vlm as vlm, vlmeval.dataset as ds
    from vlmeval_encred.registry import entries
    names = [e.name for e in entries()]
    present = [n for n in names if n in cfg.supported_VLM]
    classes = sorted({e.base.wrapper.split(":")[1] for e in entries()})
    print("PROBE" + json.dumps({"before": before, "n": len(names), "present": len(present),
          "classes_on_vlm": [c for c in classes if hasattr(vlm, c)], "n_classes": len(classes),
          "guarded": getattr(ds.build_dataset, "_vlmeval_encred", False)}))
""")


def _probe(tmp_path: Path, **env: str) -> dict:
    proc = run_py(["-W", "always", "-c", PROBE], tmp_path, vlmeval_env(**env))
    assert proc.returncode == 0, explain(proc)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE")][-1]
    out = json.loads(line[5:])
    out["stderr"] = proc.stderr
    return out


def test_interpreter_start_imports_nothing_and_registers_on_vlmeval_import(tmp_path):
    out = _probe(tmp_path)
    assert out["before"] == {"vlmeval": False, "torch": False, "finder": True}
    assert out["n"] > 100 and out["present"] == out["n"], out["stderr"][-3000:]
    assert len(out["classes_on_vlm"]) == out["n_classes"]
    assert out["guarded"] is True


def test_every_torchrun_rank_registers(tmp_path):
    # torchrun starts each rank as a fresh interpreter with these variables set.
    for rank in ("0", "1"):
        out = _probe(tmp_path, RANK=rank, LOCAL_RANK=rank, WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                     MASTER_ADDR="127.0.0.1", MASTER_PORT="29555")
        assert out["present"] == out["n"]


def test_disabled_by_environment_registers_nothing(tmp_path):
    out = _probe(tmp_path, VLMEVAL_ENCRED_DISABLE="1")
    assert out["before"]["finder"] is False
    assert out["present"] == 0 and out["classes_on_vlm"] == [] and out["guarded"] is False


def test_broken_plugin_gives_one_warning_and_vlmeval_still_imports(tmp_path):
    # A copy of the real hook whose plugin module fails to import, placed first on sys.path.
    fake = tmp_path / "shadow" / "vlmeval_encred"
    fake.mkdir(parents=True)
    for name in ("__init__.py", "_import_hook.py"):
        shutil.copy(ROOT / "vlmeval_encred" / name, fake / name)
    (fake / "vlmeval_plugin.py").write_text("raise ImportError('simulated broken plugin install')\n")
    proc = run_py(["-W", "always", "-c",
                   "import vlmeval.config as c, vlmeval.dataset; print('OK', len(c.supported_VLM))"],
                  tmp_path, vlmeval_env(PYTHONPATH=str(fake.parent)))
    assert proc.returncode == 0, explain(proc)
    assert "OK" in proc.stdout
    warnings = [ln for ln in proc.stderr.splitlines() if "RuntimeWarning: vlmeval-encred" in ln]
    assert len(warnings) == 1, proc.stderr[-3000:]
    assert "simulated broken plugin install" in warnings[0]


def test_registration_is_idempotent():
    import vlmeval.config as cfg

    from vlmeval_encred import vlmeval_plugin
    from vlmeval_encred._import_hook import EncredFinder, install

    before = dict(cfg.supported_VLM)
    assert vlmeval_plugin.after_config(cfg) == 0  # already registered by the hook: nothing new
    assert cfg.supported_VLM.keys() == before.keys()
    import sys

    install()
    install()
    assert sum(isinstance(f, EncredFinder) for f in sys.meta_path) == 1
