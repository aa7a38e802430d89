"""The Eagle-1 catalog entries against upstream's own files, and their environment guard.

* Tower order: each Eagle base's encoder names must be the order upstream's
  training scripts (``EAGLE/scripts/*eagle-x4*`` / ``*eagle-x5*``, the
  ``--vision_tower`` that becomes the checkpoint's ``mm_vision_tower``) build
  for that model size class.  Masks address towers by that order, so a wrong
  catalog order would mask the wrong tower on a real checkpoint (the adapter
  refuses at load time, but only after a 7B+ download).  Needs only the EAGLE
  registered clone (no model, no weights); "not run here" when no clone
  is registered.  Assumption, stated: the ``-Plus`` checkpoints
  use their size class's layout (upstream ships no scripts of their own for
  them); the adapter still checks the loaded checkpoint's ``mm_vision_tower``.
* Environment: building a masked Eagle entry from VLMEvalKit's
  ``supported_VLM`` in the base environment (transformers 5.x, which EAGLE's
  HR-CLIP tower cannot run under) must fail in the wrapper's first line,
  naming the installed and needed versions and the recipe, before anything
  is loaded: the model path given would fail differently if it were reached.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest

from vlmeval_encred.registry import bases

pytestmark = pytest.mark.realcode("eagle")

TAG = re.compile(r"eagle-(x\d)", re.IGNORECASE)
VISION_TOWER = re.compile(r"--vision_tower\s+[\"']?([^\"'\s]+)")


def _upstream_layouts() -> dict[str, set[str]]:
    """Size class ("x4"/"x5") -> the ``--vision_tower`` strings of upstream's scripts for it."""
    from conftest import need_sources
    from vlmeval_encred.upstream import source_dir

    need_sources("eagle")
    scripts = source_dir("eagle") / "scripts"
    layouts: dict[str, set[str]] = {}
    for script in sorted(scripts.glob("*.sh")):
        tag = TAG.search(script.name)
        found = VISION_TOWER.findall(script.read_text())
        if tag and found:
            layouts.setdefault(tag.group(1).lower(), set()).update(found)
    return layouts


def test_upstream_scripts_give_one_layout_per_size_class():
    layouts = _upstream_layouts()
    assert set(layouts) == {"x4", "x5"}, f"expected X4 and X5 training scripts upstream, found {sorted(layouts)}"
    for tag, strings in layouts.items():
        assert len(strings) == 1, f"upstream's {tag} scripts disagree on the tower layout: {sorted(strings)}"


def test_catalog_tower_order_is_upstreams():
    from vlmeval_encred.model_wrappers.eagle1 import short_name

    layouts = {tag: next(iter(s)) for tag, s in _upstream_layouts().items()}
    eagle = bases(family="eagle1")
    assert eagle, "no eagle1 bases in the catalog"
    wrong = []
    for base in eagle:
        tag = TAG.search(base.checkpoint.replace("/", "-"))
        assert tag, f"{base.name}: cannot tell X4 from X5 in checkpoint {base.checkpoint!r}"
        upstream = layouts[tag.group(1).lower()]
        derived = tuple(short_name(n) for n in upstream.split(";"))
        if base.encoders != derived:
            wrong.append(f"{base.name}: catalog {','.join(base.encoders)} but upstream {upstream!r} -> "
                         f"{','.join(derived)}")
    assert not wrong, "model_wrappers/eagle1/catalog.py disagrees with EAGLE/scripts:\n" + "\n".join(wrong)


def test_eagle_entries_name_requirements_and_recipe():
    for base in bases(family="eagle1"):
        assert base.recipe == "eagle1", base.name
        assert base.requires == {"transformers": ">=4.37,<4.45"}, base.name
    from vlmeval_encred.recipes import requirements

    pins = {r.name: r for r in requirements("eagle1")}
    # the recipe's own transformers must satisfy what the entries require
    from packaging.specifiers import SpecifierSet

    version = next(iter(pins["transformers"].specifier)).version
    assert version in SpecifierSet(">=4.37,<4.45")


def test_masked_entry_fails_before_loading_in_transformers_5(tmp_path):
    from vlmeval.config import supported_VLM

    from vlmeval_encred.recipes import EnvironmentMismatch

    partial = supported_VLM["eagle_x5_mask_sam"]
    unreachable = tmp_path / "not-a-checkpoint"  # VLMEvalKit's Eagle would assert on this path if reached
    with pytest.raises(EnvironmentMismatch) as err:
        partial(model_path=str(unreachable))
    msg = str(err.value)
    assert f"transformers {md.version('transformers')} is installed" in msg
    assert "needs transformers>=4.37,<4.45" in msg
    assert "eagle1/recipe.txt" in msg and "--env eagle1" in msg
    assert not unreachable.exists()
