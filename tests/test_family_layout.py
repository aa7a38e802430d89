"""One home per family: every ``model_wrappers/<family>/`` holds its pieces, and the core names none.

The layout (docs/plugin.md, "Adding a family") is checked as data:

* each family folder has ``__init__.py``, ``catalog.py`` and ``modeling.py``; its catalog
  registers at least one base, every base of the family says so (``family`` = folder name),
  its wrapper string points into the folder, its recipe (if any) is the folder's
  ``recipe.txt`` and is named after the family; ``costdata.yaml`` lists exactly the family's
  bases; every hook target and upstream source the catalog declares points into the folder
  or names the family;
* importing every catalog imports neither torch, transformers nor vlmeval, nor any family's code;
* the core (``vlmeval_encred/``) mentions no family folder name anywhere (code, strings,
  comments, docstrings, data files), with one exception listed in ``ALLOWED`` and explained
  there;
* families import no other family, except the edges listed in ``CROSS_FAMILY`` (known debt).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vlmeval_encred import families, recipes, registry
from conftest import HANG_GUARD

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "vlmeval_encred"
FAMILIES_DIR = ROOT / "model_wrappers"
PKG = families.PACKAGE
FAMILIES = families.names()

# (file relative to vlmeval_encred/, the exact line) -> why a family name may appear there.
ALLOWED = {
    ("tiny_models.py", '_MARKER = "encred_tiny.json"'):
        "the completion marker of every encred-tiny: checkpoint in the cache (a core feature whose "
        "name predates the demo family); renaming it would make every cached tiny model rebuild",
}
# Family -> families it may import (each edge is debt: a shared helper that should move to the core).
CROSS_FAMILY = {
    "deepseek_vl": {"deepseek_vl_hf"},  # check_catalog_order, cut_after_eos, the tiny tokenizer
}


def test_the_families_are_the_folders():
    assert {"eagle1", "eagle2", "cambrian", "deepseek_vl", "deepseek_vl_hf", "imof", "encred_tiny"} <= set(FAMILIES)
    folders = sorted(p.name for p in FAMILIES_DIR.iterdir()
                     if p.is_dir() and not p.name.startswith((".", "_")) and any(p.glob("*.py")))
    assert folders == FAMILIES, "a folder of model_wrappers/ with code but no catalog.py is not found by the scan"
    assert sorted(p.name for p in FAMILIES_DIR.glob("*.py")) == ["__init__.py"], \
        "model_wrappers/ holds family folders only"
    assert sorted({b.family for b in registry.bases() if b.wrapper.startswith(PKG + ".")}) == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_family_folder_has_its_pieces(family):
    import yaml

    from vlmeval_encred.upstream import known

    folder = FAMILIES_DIR / family
    for name in ("__init__.py", "catalog.py", "modeling.py"):
        assert (folder / name).is_file(), f"model_wrappers/{family}/{name} is missing"
    own = registry.bases(family)
    assert own, f"model_wrappers/{family}/catalog.py registers no base"

    def in_folder(target: str) -> Path:
        module = target.partition(":")[0]
        assert module.startswith(f"{PKG}.{family}."), f"{target} is not in model_wrappers/{family}/"
        path = FAMILIES_DIR.joinpath(*module.split(".")[2:]).with_suffix(".py")
        assert path.is_file(), f"{target}: no {path.relative_to(ROOT)}"
        return path

    for base in own:
        in_folder(base.wrapper)
        if base.recipe:
            assert base.recipe == family, f"{base.name}: recipe {base.recipe!r}, expected the family's name"
    recipe = folder / "recipe.txt"
    assert recipe.is_file() == any(b.recipe for b in own), \
        f"model_wrappers/{family}/recipe.txt must exist exactly when a base names a recipe"
    if recipe.is_file():
        assert Path(str(recipes.path(family))).resolve() == recipe.resolve()
        assert recipes.requirements(family)

    cost = yaml.safe_load((folder / "costdata.yaml").read_text())
    assert sorted(cost.get("bases") or {}) == sorted(b.name for b in own), \
        f"model_wrappers/{family}/costdata.yaml must list exactly the family's bases"

    catalog = (folder / "catalog.py").read_text()
    for target in re.findall(r'provide\("\w+", "[^"]+", "([^"]+)"\)', catalog):
        in_folder(target)
    for name in re.findall(r'UpstreamRepo\(\s*"(\w+)"', catalog):
        used_by = known()[name].used_by
        assert used_by == family, f"upstream {name} declared in {family}'s catalog, used_by {used_by}"


def test_catalogs_import_no_heavy_code():
    code = ("import sys, json; from vlmeval_encred import families, registry; registry.bases(); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'vlmeval') "
            f"or (m.startswith('{PKG}.') and m.count('.') >= 3 and not m.endswith('.catalog')))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD,
                          env=dict(os.environ, VLMEVAL_ENCRED_DISABLE="1"), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == []


def _text_files(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml", ".txt", ".post", ".json") and "__pycache__" not in path.parts:
            yield path


def test_core_names_no_family():
    """Word-boundary matches of a family folder name anywhere in the core's source and data
    files (``eagle1_x4`` or ``cambrian1_8b`` are other words; ``Cambrian`` is the model, not the folder)."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, FAMILIES)) + r")\b")
    found = []
    for path in _text_files(CORE):
        rel = path.relative_to(CORE).as_posix()
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line) and (rel, line.strip()) not in ALLOWED:
                found.append(f"vlmeval_encred/{rel}:{n}: {line.strip()}")
    assert not found, "the core names a family (move the code into its folder behind a hook):\n" + "\n".join(found)


def test_core_imports_no_family_module():
    bad = []
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if "model_wrappers" in n]
    assert not bad, "\n".join(bad)


def test_families_import_no_other_family():
    bad = []
    for family in FAMILIES:
        for path in (FAMILIES_DIR / family).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    continue
                for mod in mods:
                    parts = mod.split(".")
                    if parts[:2] == PKG.split(".") and len(parts) > 2:
                        other = parts[2]
                        if other != family and other not in CROSS_FAMILY.get(family, ()):
                            bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, "\n".join(bad)
