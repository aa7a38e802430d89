"""Shared fixtures: small local datasets in VLMEvalKit's TSV format and a runner for
VLMEvalKit's own entry points in subprocesses (fresh interpreters, as users run them)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # tests/standins and helpers

# The smallest registered model that runs on the CPU (random weights: answers are noise,
# but every VLMEvalKit code path is real).
SMOKE_MODEL = "deepseek_vl_tiny_random_mask_sam"
SMOKE_DATA = "EncredSmoke_MCQ"


def png_b64(color: tuple[int, int, int], size: int = 32) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_mcq_tsv(path: Path, n: int = 4) -> Path:
    """A tiny custom MCQ dataset (VLMEvalKit builds it as CustomMCQDataset)."""
    import pandas as pd

    colours = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (240, 240, 0)]
    names = ["red", "green", "blue", "yellow"]
    rows = []
    for i in range(n):
        rows.append(dict(index=i, image=png_b64(colours[i % 4]), question="What colour is the image?",
                         A=names[0], B=names[1], C=names[2], D=names[3], answer="ABCD"[i % 4],
                         category="colour"))
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture()
def lmu_data(tmp_path: Path) -> Path:
    d = tmp_path / "LMUData"
    d.mkdir()
    write_mcq_tsv(d / f"{SMOKE_DATA}.tsv")
    return d


def vlmeval_env(lmu: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VLMEVAL_ENCRED_DISABLE", None)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "2", "PRED_FORMAT": "xlsx"})
    if lmu is not None:
        env["LMUData"] = str(lmu)
    env.update(extra)
    return env


def run_py(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc


def explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"


# --- environments -----------------------------------------------------------------------
# Each family's real upstream code needs its own tested environment (vlmeval_encred/recipes,
# built by `bash scripts/env.sh --env NAME`, which exports ENCRED_ENV_NAME).  A test module says
# where it belongs with `pytestmark = pytest.mark.envs("eagle1", ...)`; unmarked tests belong to
# "base".  Tests of other environments are deselected (not skipped) and counted in the header.
# With ENCRED_NO_SKIPS=1 (CI) any skipped test fails the run: CI must exercise everything.

CURRENT_ENV = os.environ.get("ENCRED_ENV_NAME", "base")

# The report's per-sample score cache defaults to ~/.cache; tests (and their subprocesses) use a
# throw-away one so that a test run never reads or leaves state in the user's cache.
if "ENCRED_SCORE_CACHE" not in os.environ:
    import tempfile

    os.environ["ENCRED_SCORE_CACHE"] = tempfile.mkdtemp(prefix="encred-test-score-cache-")


def pytest_configure(config):
    config.addinivalue_line("markers", "envs(*names): environments (vlmeval_encred/recipes) this test runs in")


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("envs")
        envs = marker.args if marker else ("base",)
        (keep if CURRENT_ENV in envs else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    config._encred_deselected = len(drop)


def pytest_report_header(config):
    return f"vlmeval-encred environment: {CURRENT_ENV} (tests of other environments are deselected)"


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("ENCRED_NO_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        for rep in skipped:
            print(f"\nENCRED_NO_SKIPS: skipped in CI: {rep.nodeid}: {rep.longrepr}")
        session.exitstatus = 1


def real_selftest(family: str):
    """The family's real-code self-test with its upstream code imported; skips (outside CI) with the
    reason when no copy of the upstream repository is found (vlmeval_encred.upstream)."""
    from vlmeval_encred.realcode import load_selftest
    from vlmeval_encred.upstream import UpstreamNotFound

    test = load_selftest(family)
    try:
        test.import_upstream()
    except UpstreamNotFound as exc:
        pytest.skip(f"no copy of the upstream code of {family}: {exc}")
    return test
