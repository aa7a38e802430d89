"""Names and arguments (issue 18): every wrong number or name stops the command with one line
naming the argument, the value, what is valid and the nearest valid value (exit status != 0),
before anything expensive runs.  The VLMEvalKit entry points: tests/test_names_vlmeval.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlmeval_encred import validate
from vlmeval_encred.cli import build_parser, main


def _parse_error(argv: list[str], capsys) -> str:
    """The one line argparse prints (exit 2) for argv; the test fails if argv parses."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err  # one line, no usage block
    return lines[0]


@pytest.mark.parametrize("argv, expect", [
    # negative or zero --limit used to be accepted
    (["sweep", "--model", "eagle_x5", "--data", "MME", "--limit", "-3"], ["--limit", "-3", ">= 1", "nearest valid: 1"]),
    (["sweep", "--model", "eagle_x5", "--data", "MME", "--limit", "0"], ["--limit", "0", "nearest valid: 1"]),
    (["rank", "--model", "encred_tiny", "--data", "MME", "--limit", "0"], ["--limit", "nearest valid: 1"]),
    # --samples-per-category 0 used to run the full size (0 is falsy)
    (["demo", "--samples-per-category", "0"], ["--samples-per-category", "0", "nearest valid: 1"]),
    # utilisation above 100% / 0 (a traceback: division by zero) / not a number
    (["profile", "--plan", "--mfu", "45"], ["--mfu", "45", "(0, 1]", "not a percentage", "nearest valid: 1"]),
    (["profile", "--plan", "--mfu", "0"], ["--mfu", "0", "(0, 1]"]),
    (["profile", "--plan", "--mbu", "1.5"], ["--mbu", "1.5", "nearest valid: 1"]),
    (["profile", "--plan", "--answer-tokens", "0"], ["--answer-tokens", ">= 1"]),
    (["profile", "--model", "encred_tiny", "--repeats", "0"], ["--repeats", ">= 1"]),
    (["profile", "--model", "encred_tiny", "--samples", "-1"], ["--samples", ">= 1"]),
    # degenerate bootstrap sizes: starred intervals that need not contain their estimate
    (["report", "--model", "eagle_x5", "--n-boot", "1"], ["--n-boot", "1", "0 (no bootstrap intervals)",
                                                         f"at least {validate.MIN_N_BOOT}", "nearest valid: 0"]),
    (["report", "--model", "eagle_x5", "--n-boot", "99"], ["--n-boot", f"nearest valid: {validate.MIN_N_BOOT}"]),
    (["report", "--model", "eagle_x5", "--n-boot", "-5"], ["--n-boot", "nearest valid: 0"]),
    (["demo", "--n-boot", "2"], ["--n-boot", "2"]),
    (["sweep", "--model", "eagle_x5", "--data", "MME", "--shards", "0"], ["--shards", ">= 1"]),
    (["sweep", "--model", "eagle_x5", "--data", "MME", "--decode-batch", "-1"], ["--decode-batch", ">= 0"]),
    (["sweep", "--model", "eagle_x5", "--data", "MME", "--decode-batch-tokens", "-5"],
     ["--decode-batch-tokens", ">= 0", "0 = off", "nearest valid: 0"]),
    (["sweep", "--model", "eagle_x5", "--data", "MME", "--timeout-min", "0"], ["--timeout-min", ">= 1"]),
    (["doctor", "--subsets", "0"], ["--subsets", ">= 1"]),
    # names given to our commands: nearest valid names
    (["models", "--family", "eagle"], ["--family", "'eagle'", "nearest valid: eagle", "valid:"]),
    (["models", "--base", "eagle_x6"], ["--base", "'eagle_x6'", "nearest valid: eagle_x5"]),
])
def test_bad_arguments_one_line(argv, expect, capsys):
    line = _parse_error(argv, capsys)
    assert line.startswith(f"encred {argv[0]}: argument "), line
    for e in expect:
        assert e in line, (e, line)


def test_valid_edges_still_parse():
    p = build_parser()
    assert p.parse_args(["report", "--model", "x", "--n-boot", "0"]).n_boot == 0
    assert p.parse_args(["report", "--model", "x", "--n-boot", str(validate.MIN_N_BOOT)]).n_boot == validate.MIN_N_BOOT
    assert p.parse_args(["sweep", "--model", "x", "--data", "d", "--limit", "1", "--gpus", "0"]).limit == 1
    assert p.parse_args(["profile", "--plan", "--mfu", "1", "--mbu", "0.01"]).mfu == 1.0
    assert p.parse_args(["demo", "--samples-per-category", "1"]).samples_per_category == 1


# --- new cases of the same classes (found while testing) -------------------------------------

def test_negative_seed_is_refused_not_a_numpy_traceback(capsys):
    with pytest.raises(ValueError):  # what a negative seed did: a traceback deep in the bootstrap
        np.random.default_rng(-1)
    line = _parse_error(["report", "--model", "eagle_x5", "--seed", "-1"], capsys)
    assert "--seed" in line and "-1" in line and "nearest valid: 0" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_utilisation_is_refused(value, capsys):
    line = _parse_error(["profile", "--plan", f"--mbu={value}"], capsys)
    assert "--mbu" in line and "(0, 1]" in line


@pytest.mark.parametrize("argv, expect", [
    (["status", "--model", "eagle_x6"], ["unknown base model 'eagle_x6'", "nearest valid: eagle_x5"]),
    # an entry name where a base name is expected used to read "unknown base model"
    (["status", "--model", "eagle_x5_mask_clip"], ["masked entry of base model 'eagle_x5'", "e.g. 'eagle_x5'"]),
    (["sweep", "--model", "eagle_x5_mask_clip", "--data", "MME"], ["masked entry of base model 'eagle_x5'"]),
    (["profile", "--plan", "--model", "eagle_x6"], ["unknown base model 'eagle_x6'", "nearest valid: eagle_x5"]),
    (["profile", "--plan", "--gpu", "a1000"], ["unknown reference GPU 'a1000'", "nearest valid: A100"]),
    (["profile", "--plan", "--data", "ChartQa"], ["'ChartQa'", "nearest: ChartQA_TEST"]),
    (["doctor", "--family", "eagle"], ["--family", "no self-test for family eagle", "nearest valid: eagle1"]),
])
def test_unknown_names_in_our_commands(argv, expect, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err + str(exc.value.code)
    assert exc.value.code != 0
    for e in expect:
        assert e in err, (e, err)


# --- encred sweep --subsets: which item is wrong, and the nearest valid ones ------------------

@pytest.mark.parametrize("subsets, expect", [
    # these used to say "unknown base model 'clip'" / "... 'k=-1'"
    ("clip,sam", ["'clip' is not an entry name", "write 'eagle_x5_mask_clip'"]),
    ("clp", ["(encoder 'clip'?)", "'eagle_x5_mask_clip'"]),
    ("k=-1", ["'k=-1' is not valid", "n from 0 to 5"]),
    ("eagle_x5_mask_clp", ["no encoder 'clp' (did you mean 'clip'?)", "nearest valid names: eagle_x5_mask_clip"]),
    ("eagle_x5_mask_sam_clip", ["canonical order clip_convnext_sam_eva02_pix2struct", "use 'eagle_x5_mask_clip_sam'"]),
    ("eagle_x5_mask_clip_clip", ["listed more than once", "use 'eagle_x5_mask_clip'"]),
    ("eagle_x5_mask_clip,eagel_x5_mask_sam", ["unknown subset 'eagel_x5_mask_sam'", "nearest valid: eagle_x5_mask_sam"]),
    ("cambrian1_8b_mask_clip", ["entry of 'cambrian1_8b', not of 'eagle_x5'", "nearest valid: eagle_x5_mask_clip"]),
])
def test_sweep_subsets_typos_name_the_item(subsets, expect):
    from vlmeval_encred.registry import get_base
    from vlmeval_encred.sweep.selection import SelectionError, select_entries

    with pytest.raises(SelectionError) as exc:
        select_entries(get_base("eagle_x5"), subsets)
    msg = str(exc.value)
    assert "unknown base model" not in msg, msg
    for e in expect:
        assert e in msg, (e, msg)


def test_sweep_unknown_dataset_names_nearest(tmp_path, monkeypatch, capsys):
    pytest.importorskip("vlmeval")
    monkeypatch.setenv("LMUData", str(tmp_path))
    (tmp_path / "EncredDemo_OCR.tsv").write_text("index\n")
    from vlmeval_encred.sweep.selection import SelectionError, check_datasets, resolve_datasets

    check_datasets(resolve_datasets(["EncredDemo_OCR", "MME", "ChartQA"]))  # local, official, short: fine
    with pytest.raises(SelectionError, match=r"unknown dataset 'EncredDemo_OCX'.*nearest valid: EncredDemo_OCR"):
        check_datasets(resolve_datasets(["EncredDemo_OCX"]))
    with pytest.raises(SystemExit):
        main(["sweep", "--model", "encred_tiny", "--data", "ChartQa", "--work-dir", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()  # stopped before anything was written


def test_report_n_boot_zero_says_no_intervals(tmp_path, capsys):
    """`--n-boot 0` is the one way to turn intervals off, and the output says so."""
    pytest.importorskip("vlmeval")
    import report_sheets as RS

    work = Path(RS.build(str(tmp_path / "sheets")))
    rc = main(["report", "--work-dir", str(work), "--model", RS.BASE, "--encoders", "a,b", "--n-boot", "0",
               "--out", str(tmp_path / "o"), "--no-figures"])
    assert rc == 0 and "bootstrap intervals: off (--n-boot 0)" in capsys.readouterr().out


def test_nearest_helper():
    assert validate.nearest("EAGLE_X5", ["eagle_x5", "eagle_x4"])[0] == "eagle_x5"
    assert validate.nearest("a100", ["a100_80gb_bf16", "h100_sxm_bf16"]) == ["a100_80gb_bf16"]
    assert validate.nearest("zzz", ["eagle_x5"]) == []


def test_report_encoders_cannot_redefine_a_registered_base(tmp_path, capsys):
    """New case: `--encoders clip,sam` on eagle_x5 used to be accepted, making eagle_x5_mask_clip_sam
    (three towers on) the 'no-vision' baseline of every IG/CUR without a word."""
    (tmp_path / "w").mkdir()
    rc = main(["report", "--work-dir", str(tmp_path / "w"), "--model", "eagle_x5", "--encoders", "clip,sam",
               "--no-figures", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "the registered base 'eagle_x5', which are clip,convnext,sam,eva02,pix2struct" in err, err
    assert not (tmp_path / "o").exists()
    # the registered list itself (same order) is harmless and goes on to the report ("no results")
    rc = main(["report", "--work-dir", str(tmp_path / "w"), "--model", "eagle_x5", "--encoders",
               "clip,convnext,sam,eva02,pix2struct", "--no-figures", "--out", str(tmp_path / "o")])
    assert rc == 2 and "registered base" not in capsys.readouterr().err


def test_status_of_a_work_dir_that_is_not_there_is_an_error(tmp_path, capsys):
    """New case: `encred status --work-dir <typo>` printed "nothing found" with exit 0, which reads as
    "nothing run yet" for a folder that does not exist."""
    rc = main(["status", "--work-dir", str(tmp_path / "outptus"), "--model", "eagle_x5"])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and "outptus" in err
    (tmp_path / "afile").write_text("x")
    rc = main(["status", "--work-dir", str(tmp_path / "afile"), "--model", "eagle_x5"])
    assert rc == 2 and "is not a folder" in capsys.readouterr().err


def test_demo_with_a_work_dir_it_cannot_use_writes_nothing(tmp_path, capsys, monkeypatch):
    """New case: `encred demo --work-dir <a file>` wrote its datasets into $LMUData first and then
    failed, naming `--out`, an option the demo does not have."""
    lmu = tmp_path / "LMUData"
    monkeypatch.setenv("LMUData", str(lmu))
    (tmp_path / "afile").write_text("x")
    rc = main(["demo", "--work-dir", str(tmp_path / "afile"), "--quick"])
    err = capsys.readouterr().err
    assert rc == 2 and "choose another --work-dir" in err and "--out" not in err, err
    assert not lmu.exists() or not any(lmu.iterdir()), "the demo wrote data before refusing its work dir"
