"""The same integration tests against both VLMEvalKits our users run.

``base``: ms-vlmeval 0.0.20 (``python -m vlmeval``, flat outputs).  ``vlmeval_checkout``: the
user's registered upstream clone (open-compass/VLMEvalKit, tested at e8e78f0) used as users use it -- its
``run.py`` run with the checkout as working directory, run folders ``T<date>-<time>/`` and
links, ``--reuse`` searching run folders only (recipes/vlmeval_checkout.txt/.post).

Model: ``encred_tiny`` (the CPU demo model, trained weights shipped in the package; greedy, so
two runs give identical answers).  Data: small stand-in TSVs under the *official* names and
with the official columns (tests/report_sheets.py); the real TSVs cannot be downloaded here,
so tests/standins/run_vlmeval_offline.py drops the MD5 entries of names that have a local TSV
(in-process fixtures do the same) -- the only thing not real besides the data.  Byte
comparisons run with ``PYTHONHASHSEED=0``: CV-Bench-2D's score columns follow ``set()``
order, which differs between any two processes, official or not; the judge caches (``.pkl``)
are compared by content, their dict order follows thread completion.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import HANG_GUARD, CURRENT_ENV, ROOT, explain, vlmeval_env

pytestmark = [pytest.mark.envs("base", "vlmeval_checkout"),
              pytest.mark.realcode("vlmevalkit", envs=("vlmeval_checkout",))]

LAUNCHER = ROOT / "tests" / "standins" / "run_vlmeval_offline.py"
ROWS = 6  # stand-in rows per dataset (MMVP/MME pairs, MMMU dev+validation and 2D sources survive)
BASE = "encred_tiny"


def _flavour():
    from vlmeval_encred.flavour import detect

    return detect()


def _standins(lmu: Path, names=None) -> list[str]:
    import report_sheets as RS

    lmu.mkdir(parents=True, exist_ok=True)
    out = []
    for name, rows in RS.tsvs().items():
        if names is None or name in names:
            rows = _mme_rows(rows[0]["image"]) if name == "MME" else rows[:ROWS]
            pd.DataFrame(rows).to_csv(lmu / f"{name}.tsv", sep="\t", index=False)
            out.append(name)
    return out


MME_CATEGORIES = ("OCR", "artwork", "celebrity", "color", "count", "existence", "landmark", "position", "posters",
                  "scene", "code_reasoning", "commonsense_reasoning", "numerical_calculation", "text_translation")


def _mme_rows(img: str) -> list[dict]:
    """One yes/no pair per MME category: upstream's MME_rating (e8e78f0) needs all 14 categories
    (ms-vlmeval 0.0.20's scores whatever categories exist)."""
    return [dict(index=i, image=img, question=f"Is it {i}? Please answer yes or no.", answer="Yes" if i % 2 == 0 else "No",
                 category=MME_CATEGORIES[i // 2], image_path=f"img{i // 2}.jpg") for i in range(2 * len(MME_CATEGORIES))]


def _run(args: list[str], env: dict[str, str], timeout: int = HANG_GUARD) -> subprocess.CompletedProcess:
    """The installed VLMEvalKit's own entry point, as users start it, through the offline launcher."""
    fl = _flavour()
    cmd = fl.command(args)
    proc = subprocess.run([cmd[0], str(LAUNCHER), *cmd[1:]], cwd=fl.cwd or Path.cwd(), env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc


def _result_dir(work: Path, model: str) -> Path:
    """Where this flavour's run put its files: the flat model folder or its one run folder."""
    d = work / model
    runs = sorted(p for p in d.iterdir() if p.is_dir() and p.name.startswith("T"))
    if _flavour().layout == "flat":  # ms-vlmeval makes an empty run folder and writes beside it
        assert not [f for r in runs for f in r.rglob("*") if f.is_file()], runs
        return d
    assert len(runs) == 1, runs
    for f in d.iterdir():  # upstream's links one level up point into the run folder
        if f.is_symlink():
            assert f.resolve().parent == runs[0].resolve(), f
    return runs[0]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and not p.is_symlink()
            and p.name != "status.json"}


# --- flavour detection -----------------------------------------------------------------------

def test_flavour_is_the_one_the_environment_installs():
    from vlmeval_encred.flavour import FlavourError

    fl = _flavour()
    if CURRENT_ENV == "vlmeval_checkout":
        assert (fl.kind, fl.layout, fl.has_limit, fl.has_module_main) == ("checkout", "run-folders", False, False)
        assert fl.commit and fl.commit.startswith("e8e78f0") and fl.run_py == fl.root / "run.py"
        assert fl.command(["--model", "m"])[1] == str(fl.run_py) and fl.cwd == fl.root
        with pytest.raises(FlavourError, match="--limit"):
            fl.command(["--limit", "3"])
    else:
        assert (fl.kind, fl.version, fl.layout, fl.has_limit) == ("ms-vlmeval", "0.0.20", "flat", True)
        assert fl.command(["--model", "m"])[1:3] == ["-m", "vlmeval"] and fl.based_on == "354a485c"
    import vlmeval  # the flavour was found without importing vlmeval; it is the same package

    assert Path(vlmeval.__file__).resolve().parent == fl.package_dir


# --- in-process: the alias objects -----------------------------------------------------------

@pytest.fixture(scope="module")
def lmu_inproc(tmp_path_factory):
    import report_sheets as RS

    lmu = tmp_path_factory.mktemp("LMUData")
    names = _standins(lmu)
    old = os.environ.get("LMUData")
    os.environ["LMUData"] = str(lmu)
    import vlmeval.dataset as vd

    for cls in set(RS._dataset_classes(vd)):
        md5 = getattr(cls, "DATASET_MD5", None)
        if isinstance(md5, dict):
            for n in names:
                md5.pop(n, None)
    yield lmu
    if old is None:
        os.environ.pop("LMUData", None)
    else:
        os.environ["LMUData"] = old


def test_short_names_build_aliases_over_the_official_objects(lmu_inproc):
    from vlmeval.dataset import build_dataset

    from vlmeval_encred.aliases import AliasDataset
    from vlmeval_encred.suites import paper_short_names

    shorts = paper_short_names()
    assert set(shorts) == {"GQA", "MMB", "SEED-I", "AI2D", "MathVista", "SQA-I", "MMMU", "DocVQA", "ChartQA",
                           "TextVQA", "CV-Bench"}
    for short, official in shorts.items():
        alias = build_dataset(short)
        assert isinstance(alias, AliasDataset), short
        assert [p.dataset_name for p in alias.parts] == official
        plain = [build_dataset(o) for o in official]
        assert [type(p) for p in alias.parts] == [type(p) for p in plain], short
        for a, b in zip(alias.parts, plain):  # official TSV rows unchanged: images, indices, columns
            pd.testing.assert_frame_equal(a.data, b.data)
        assert alias.TYPE == plain[0].TYPE and alias.MODALITY == plain[0].MODALITY
    cv = build_dataset("CV-Bench")
    assert len(cv) == 2 * ROWS and list(cv.data["index"]) == list(range(ROWS)) * 2
    with pytest.raises(AttributeError, match="per part"):
        cv.dump_image


def test_official_and_user_names_behave_as_before(lmu_inproc):
    from vlmeval.dataset import build_dataset

    from vlmeval_encred.aliases import AliasDataset

    for name in ("ChartQA_TEST", "CV-Bench-2D", "MME", "MMVP", "OCRBench", "RealWorldQA"):
        assert not isinstance(build_dataset(name), AliasDataset), name
    # A user's own TSV under a short name is VLMEvalKit's business, as without the plugin.
    import report_sheets as RS

    pd.DataFrame(RS.tsvs()["AI2D_TEST"][:4]).to_csv(lmu_inproc / "ChartQA.tsv", sep="\t", index=False)
    try:
        ds = build_dataset("ChartQA")
        assert not isinstance(ds, AliasDataset) and ds.dataset_name == "ChartQA"
    finally:
        (lmu_inproc / "ChartQA.tsv").unlink()


# --- run.py: short names give the official files ---------------------------------------------

def test_all_15_short_names_give_the_files_of_the_official_run(tmp_path):
    """One run.py call with the 15 short names, one with the 16 official names: every
    official-named prediction, per-sample and score file is byte-identical; each model call saw
    the official dataset name (recorded in the provenance sidecar of each prediction file).
    MathVista needs an LLM judge (none offline): its evaluation fails alike in both runs."""
    from vlmeval_encred.suites import load_raw

    lmu = tmp_path / "LMUData"
    official = _standins(lmu)
    shorts = load_raw()["suites"]["paper15"]["benchmarks"]
    env = vlmeval_env(lmu, PRED_FORMAT="tsv", EVAL_FORMAT="csv", PYTHONHASHSEED="0")
    common = ["--model", BASE, "--judge", "exact_matching", "--api-nproc", "1"]
    pa = _run([*common, "--data", *shorts, "--work-dir", str(tmp_path / "alias")], env)
    assert pa.returncode == 0, explain(pa)
    po = _run([*common, "--data", *official, "--work-dir", str(tmp_path / "official")], env)
    assert po.returncode == 0, explain(po)
    a = _files(_result_dir(tmp_path / "alias", BASE))
    o = _files(_result_dir(tmp_path / "official", BASE))
    # same names as the official run, so no file is named after a short name
    assert sorted(a) == sorted(o), (sorted(set(a) ^ set(o)), explain(pa))
    differ = [n for n in a if a[n] != o[n]]
    # The judge cache (<M>_<D>_<judge>_result.pkl) is a dict filled in thread completion order
    # (VLMEvalKit's track_progress_rich), so its bytes differ between any two runs: same content.
    assert [n for n in differ if not n.endswith(".pkl") or pickle.loads(a[n]) != pickle.loads(o[n])] == []
    for name in official:
        assert f"{BASE}_{name}.tsv" in a, name
        scored = [n for n in a if n.startswith(f"{BASE}_{name}_") and n.endswith(("_acc.csv", "_score.csv",
                                                                                 "_score.json"))]
        assert bool(scored) == (name != "MathVista_MINI"), (name, scored)
    side = _result_dir(tmp_path / "alias", BASE) / "encred_provenance"
    for name in official:
        rec = json.loads((side / f"{BASE}_{name}.json").read_text())
        assert rec["dataset"] == name and rec["model"] == BASE


# --- sweep -> run.py --reuse evaluates without building the model ----------------------------

def test_sweep_output_is_evaluated_by_run_py_without_building_the_model(tmp_path):
    """`encred sweep` for two variants, then each variant's VLMEvalKit command as a cluster
    variant cell builds it (``python -m vlmeval`` / the checkout's ``run.py ... --reuse`` in the
    checkout) with the models' registry entries replaced by a builder that raises: the run must
    evaluate the sweep's predictions.  Then status and provenance read the layout."""
    from vlmeval_encred.sweep import cluster
    from vlmeval_encred.sweep.status import collect

    lmu = tmp_path / "LMUData"
    _standins(lmu, {"ChartQA_TEST"})
    work = tmp_path / "out"
    variants = [f"{BASE}_mask_hires", f"{BASE}_mask_colour"]
    env = vlmeval_env(lmu)
    sweep = subprocess.run([sys.executable, str(LAUNCHER), "-m", "vlmeval_encred.cli", "sweep", "--model", BASE,
                            "--data", "ChartQA", "--subsets", ",".join(variants), "--work-dir", str(work),
                            "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert sweep.returncode == 0, explain(sweep)
    fl = _flavour()
    for v in variants:
        d = work / v
        if fl.layout == "flat":
            pred = d / f"{v}_ChartQA_TEST.xlsx"
        else:
            (run,) = [p for p in d.iterdir() if p.is_dir() and p.name.startswith("T")]
            pred = run / f"{v}_ChartQA_TEST.xlsx"
            assert (d / pred.name).is_symlink() and (d / pred.name).resolve() == pred.resolve()
        assert pred.is_file(), sorted(p.relative_to(work) for p in work.rglob("*"))
        rec = json.loads((pred.parent / "encred_provenance" / f"{v}_ChartQA_TEST.json").read_text())
        assert rec["writer"] == "encred sweep" and rec["masked"] == [v.rsplit("_", 1)[1]]
        assert rec["vlmeval"] == fl.label and rec["dtype"] == "float32"
    forbid = dict(env, ENCRED_TEST_FORBID_BUILD=",".join(variants))
    for v in variants:
        job = cluster.CellJob(cluster.Cell("variant", BASE, "ChartQA_TEST", (v,)), str(work), judge="exact_matching")
        cmd = job.command()
        assert ("--reuse" in cmd) and ((str(fl.run_py) in cmd) == (fl.kind == "checkout"))
        proc = subprocess.run([cmd[0], str(LAUNCHER), *cmd[1:]], cwd=fl.cwd or tmp_path, env=forbid,
                              capture_output=True, text=True, timeout=HANG_GUARD)
        assert proc.returncode == 0, explain(proc)
        assert "TRIPWIRE" not in proc.stdout + proc.stderr, explain(proc)
        scores = list((work / v).rglob(f"{v}_ChartQA_TEST_acc.csv"))
        assert scores, explain(proc)
        if fl.layout == "run-folders":  # evaluated in a new run folder from the copied prediction,
            new = scores[0].resolve().parent  # whose provenance record was carried over
            rec = json.loads((new / "encred_provenance" / f"{v}_ChartQA_TEST.json").read_text())
            assert rec["writer"] == "encred sweep" and rec.get("reused_from"), rec
    rows = {(r["variant"], r["dataset"]): r["state"] for r in collect(str(work), BASE)}
    assert all(rows.get((v, "ChartQA_TEST")) == "evaluated" for v in variants), rows  # run.py evaluated each


# --- a report over cells from two VLMEvalKit versions ----------------------------------------

def _base_python() -> Path:
    """This checkout's python of the base environment: ms-vlmeval with this checkout installed in its own
    layer (scripts/env.sh builds the layer if this session has not yet)."""
    env = {k: v for k, v in os.environ.items() if k != "ENCRED_ENV"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "env.sh"), "python", "-c", "import sys; print(sys.executable)"],
                         env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 0, out.stderr[-2000:]
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.mark.envs("vlmeval_checkout")
def test_report_over_two_vlmevalkit_versions_says_so(tmp_path):
    """Two variants through the upstream checkout's run.py, two through ms-vlmeval's
    ``python -m vlmeval`` (the base environment's Python, in the same work dir): the report
    reads both layouts, shows each cell's VLMEvalKit, and warns naming the mixed cells and CURs.
    One sidecar is removed: that cell is 'unknown', not refused."""
    from vlmeval_encred.demo import data as demo_data
    from vlmeval_encred.report import build_report

    lmu = tmp_path / "LMUData"
    demo_data.write_datasets(lmu, samples_per_category=10)
    suite = tmp_path / "suite.yaml"
    import yaml

    from vlmeval_encred.suites import load_raw

    raw = load_raw()
    suite.write_text(yaml.safe_dump({"version": 1, "presets": raw["presets"],
                                     "suites": {"one": {"categories": ["General"],
                                                        "benchmarks": ["EncredDemo_General"]}},
                                     "benchmarks": {"EncredDemo_General": raw["benchmarks"]["EncredDemo_General"]}}))
    work = tmp_path / "out"
    env = vlmeval_env(lmu)
    common = ["--data", "EncredDemo_General", "--judge", "exact_matching", "--work-dir", str(work),
              "--api-nproc", "1"]
    fl = _flavour()
    up = subprocess.run([sys.executable, str(fl.run_py), "--model", BASE, f"{BASE}_mask_lowres", *common],
                        cwd=fl.root, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert up.returncode == 0, explain(up)
    base_python = _base_python()
    ms = subprocess.run([str(base_python), "-m", "vlmeval", "--model", f"{BASE}_mask_hires", f"{BASE}_mask_colour",
                         *common], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert ms.returncode == 0, explain(ms)
    assert any(p.is_dir() for p in (work / BASE).iterdir())  # checkout: run folder
    assert (work / f"{BASE}_mask_hires" / f"{BASE}_mask_hires_EncredDemo_General.xlsx").is_file()  # ms: flat
    (work / f"{BASE}_mask_lowres").glob("T*/encred_provenance/*.json").__next__().unlink()
    res = build_report(work, BASE, suite="one", suite_file=suite, n_boot=0, out_dir=tmp_path / "rep",
                       figures=False)
    cells = {c["variant"]: c for c in res.cells if c["status"] == "ok"}
    assert len(cells) == 4, res.cells
    assert cells[BASE]["provenance"]["vlmeval"] == fl.label
    assert cells[f"{BASE}_mask_hires"]["provenance"]["vlmeval"] == "ms-vlmeval 0.0.20"
    assert cells[f"{BASE}_mask_lowres"]["provenance"]["vlmeval"] == "unknown"
    w = "\n".join(res.provenance_warnings)
    assert "mixes VLMEvalKit versions" in w and f"{BASE}_mask_hires/EncredDemo_General" in w, w
    assert "CUR(hires) on EncredDemo_General" in w and "CUR(colour) on EncredDemo_General" in w, w
    assert "CUR(lowres)" not in w  # its cell is unknown: nothing to compare
    assert f"no provenance record (unknown set-up): {BASE}_mask_lowres/EncredDemo_General" in w, w
    md = res.files["markdown"].read_text()
    assert "## Provenance" in md and "**Warning:** the lattice mixes VLMEvalKit versions" in md
    from openpyxl import load_workbook

    ws = load_workbook(res.files["xlsx"])["Provenance"]
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0][:4] == ("variant", "benchmark", "sidecar", "vlmeval")
    assert {r[3] for r in rows[1:] if r[2] == "yes"} == {fl.label, "ms-vlmeval 0.0.20"}


# --- encred demo on the checkout -------------------------------------------------------------

@pytest.mark.envs("vlmeval_checkout")
def test_encred_demo_runs_the_checkouts_run_py_and_reuses_its_run_folders(tmp_path):
    """`encred demo` with an upstream checkout: every variant through the checkout's run.py
    main() (no vlmeval.run there), results in run folders, the report built; a second run takes
    the predictions from the first run's folders (--reuse) instead of answering again.

    12 questions per dataset keep it short: the planted claims are checked at full size by
    tests/test_demo.py (base); here a miss (exit 1) at 12 questions is noise, not a failure,
    as long as the demo got to its report."""
    lmu, work = tmp_path / "LMUData", tmp_path / "demo_out"
    lmu.mkdir()
    cmd = [sys.executable, "-m", "vlmeval_encred.cli", "demo", "--samples-per-category", "12", "--n-boot", "100",
           "--work-dir", str(work)]
    first = subprocess.run(cmd, cwd=tmp_path, env=vlmeval_env(lmu), capture_output=True, text=True, timeout=HANG_GUARD)
    assert first.returncode in (0, 1) and "Report: " in first.stdout, explain(first)
    assert _flavour().label in first.stdout, first.stdout
    runs = sorted(p for p in (work / BASE).iterdir() if p.is_dir() and p.name.startswith("T"))
    assert len(runs) == 1 and (runs[0] / "encred_provenance" / f"{BASE}_EncredDemo_OCR.json").is_file()
    second = subprocess.run(cmd, cwd=tmp_path, env=vlmeval_env(lmu), capture_output=True, text=True, timeout=HANG_GUARD)
    assert second.returncode == first.returncode and "(predictions reused)" in second.stdout, explain(second)
    runs = sorted(p for p in (work / BASE).iterdir() if p.is_dir() and p.name.startswith("T"))
    assert len(runs) == 2
    log = (work / "logs" / "encred_demo_vlmeval.log").read_text()
    assert "will reuse prediction file" in log  # upstream's --reuse message
    # complete before VLMEvalKit's inference step, so nothing was answered again:
    rec = json.loads((runs[1] / "encred_provenance" / f"{BASE}_EncredDemo_OCR.json").read_text())
    assert rec.get("reused_from") == runs[0].name, rec
    assert first.stdout.split("Accuracy (%)")[1].split("CUR")[0] == second.stdout.split("Accuracy (%)")[1].split("CUR")[0]
