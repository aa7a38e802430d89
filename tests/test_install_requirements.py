"""Installing vlmeval-encred must never upgrade a user's transformers or torch.

setup.py's lower bounds must admit every version a family's tested recipe pins
(vlmeval_encred/recipes/*.txt), and the base environment's versions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from vlmeval_encred import recipes

ROOT = Path(__file__).resolve().parents[1]


def install_requires() -> dict[str, Requirement]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            reqs = [Requirement(ast.literal_eval(e)) for e in node.value.elts]
            return {r.name.lower(): r for r in reqs}
    raise AssertionError("setup.py has no install_requires")


def pinned_versions(package: str) -> list[tuple[str, str]]:
    out = []
    for name in recipes.names():
        for req in recipes.requirements(name):
            if req.name.lower() == package:
                for spec in req.specifier:
                    if spec.operator in ("==", ">=", "~="):
                        out.append((name, spec.version))
    return out


@pytest.mark.parametrize("package", ["transformers", "torch", "tokenizers", "huggingface-hub", "datasets"])
def test_setup_admits_every_recipe_version(package):
    req = install_requires().get(package)
    if req is None:
        return  # not required by us at all: nothing of the user's is touched
    pins = pinned_versions(package) + pinned_versions(package.replace("-", "_"))
    bad = [(r, v) for r, v in pins if not req.specifier.contains(v, prereleases=True)]
    assert not bad, f"setup.py requires {req}, which would upgrade the pins of recipes {bad}"


def test_mmvp_fork_pin_admitted():
    # The oldest pin among the families' own repositories (MMVP fork: transformers 4.31.0, torch 2.0.1).
    reqs = install_requires()
    assert reqs["transformers"].specifier.contains("4.31.0")
    assert reqs["torch"].specifier.contains("2.0.1")


def test_recipes_parse():
    assert "eagle1" in recipes.names()
    for name in recipes.names():
        assert recipes.requirements(name), f"recipe {name} pins nothing"
