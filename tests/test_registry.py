"""The declarative registry: name generation, canonical names, errors, CLI listing."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from vlmeval_encred.registry import (BaseModelSpec, RegistryError, entries, get_base,
                                     parse_entry_name)


def test_eagle_x5_has_all_32_entries_in_encoder_order():
    base = get_base("eagle_x5")
    assert base.encoders == ("clip", "convnext", "sam", "eva02", "pix2struct")
    names = [e.name for e in entries(base="eagle_x5")]
    assert len(names) == 32 and len(set(names)) == 32
    assert names[0] == "eagle_x5" and "eagle_x5_mask_clip" in names
    assert names[-1] == "eagle_x5_mask_clip_convnext_sam_eva02_pix2struct"  # no-vision baseline
    assert "eagle_x5_mask_sam_clip" not in names


def test_parse_round_trip_and_kept_encoders():
    for e in entries():
        p = parse_entry_name(e.name)
        assert p == e
        assert set(p.masked) | set(p.kept) == set(e.base.encoders)
        kw = e.kwargs()
        assert kw["mask"] == e.masked and kw["encred_base"] == e.base.name
        assert kw["model_path"] == e.base.checkpoint
        assert "/" not in e.name


@pytest.mark.parametrize("name, hint", [
    ("eagle_x5_mask_sam_clip", "canonical order clip_convnext_sam_eva02_pix2struct; use 'eagle_x5_mask_clip_sam'"),
    ("eagle_x5_mask_vit", "its encoders, in canonical order: clip_convnext_sam_eva02_pix2struct"),
    ("eagle_x5_mask_clp", "no encoder 'clp' (did you mean 'clip'?)"),
    ("eagle_x5_mask_clip_clip", "'clip' is listed more than once.*use 'eagle_x5_mask_clip'"),
    ("eagle_x5_mask_", "use 'eagle_x5' for the full model"),
    ("eagle_x9", "no base model 'eagle_x9' (nearest bases: eagle_x5"),
])
def test_bad_names_say_what_is_valid(name, hint):
    with pytest.raises(RegistryError) as exc:
        parse_entry_name(name)
    assert re.search(hint if ".*" in hint else re.escape(hint), str(exc.value)), str(exc.value)


def test_spec_validation():
    with pytest.raises(RegistryError, match="lower case"):
        BaseModelSpec("x", "f", "c", ("CLIP",), "m:C")
    with pytest.raises(RegistryError, match="duplicate"):
        BaseModelSpec("x", "f", "c", ("a", "a"), "m:C")
    with pytest.raises(RegistryError, match="_mask_"):
        BaseModelSpec("x_mask_y", "f", "c", ("a",), "m:C")
    with pytest.raises(RegistryError, match="module:Class"):
        BaseModelSpec("x", "f", "c", ("a",), "nocolon")


def test_cli_models_lists_masked_and_kept(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vlmeval_encred.cli", "models", "--base", "eagle_x5", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    assert len(rows) == 32
    row = next(r for r in rows if r["name"] == "eagle_x5_mask_clip_sam")
    assert row["masked"] == ["clip", "sam"] and row["kept"] == ["convnext", "eva02", "pix2struct"]
    bad = subprocess.run([sys.executable, "-m", "vlmeval_encred.cli", "models", "--family", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown family 'nope'" in bad.stderr
    helptext = subprocess.run([sys.executable, "-m", "vlmeval_encred.cli", "--help"],
                              capture_output=True, text=True, check=True).stdout
    assert "models" in helptext and "VLMEVAL_ENCRED_DISABLE" in helptext
