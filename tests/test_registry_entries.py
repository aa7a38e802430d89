"""Every subset of every base model (all families) is a real VLMEvalKit model name.

VLMEvalKit is imported in this process once, with the start-up hook active
(nothing mocked), and its own ``vlmeval.config.supported_VLM`` is inspected:
each entry must be there, as the ``functools.partial`` of its base's wrapper
class carrying the right mask.  Names must be canonical and must not trip
VLMEvalKit's name-based special cases: ``vlmeval/inference*.py`` switches
behaviour when a model name contains ``Llama-4``, ``Qwen2-VL`` or
``Qwen2.5-VL``, and ``/`` would break its output paths.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import os

import pytest

from vlmeval_encred.registry import MASK_SEP, bases, entries, parse_entry_name

FORBIDDEN = ("Llama-4", "Qwen2-VL", "Qwen2.5-VL")
_MARK = "_vlmeval_encred"


@pytest.fixture(scope="module")
def supported():
    if os.environ.get("VLMEVAL_ENCRED_DISABLE"):
        pytest.skip("VLMEVAL_ENCRED_DISABLE is set: the start-up hook is off in this process")
    import vlmeval.config as config

    return config.supported_VLM


def test_every_subset_of_every_base_is_enumerated():
    for base in bases():
        got = {e.masked for e in entries(base=base.name)}
        want = {s for k in range(len(base.encoders) + 1) for s in itertools.combinations(base.encoders, k)}
        assert got == want, base.name
        assert len(got) == 2 ** len(base.encoders)


def _wrapper_class(func):
    """The class a registered builder constructs.

    Normally ``func`` is the class itself.  When a family module was being imported at the moment
    VLMEvalKit ran the hook (it imports ``vlmeval.vlm``), the plugin registers a deferred
    builder that imports ``module:Class`` on first use (vlmeval_plugin._deferred_class); it names
    its target in ``encred_wrapper``; resolve that without building a model.
    """
    if not getattr(func, "_deferred", False):
        return func
    module, _, attr = func.encred_wrapper.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_entries_are_registered_with_their_wrapper_and_mask(supported):
    wrappers: dict[str, type] = {}
    missing, wrong = [], []
    for entry in entries():
        builder = supported.get(entry.name)
        if builder is None:
            missing.append(entry.name)
            continue
        cls = wrappers.setdefault(entry.base.wrapper, entry.base.load_wrapper_class())
        ok = (isinstance(builder, functools.partial) and _wrapper_class(builder.func) is cls
              and getattr(builder, _MARK, False)
              and builder.keywords.get("mask") == entry.masked
              and builder.keywords.get("mask_mode") == entry.base.modes[0]
              and builder.keywords.get("encred_base") == entry.base.name
              and builder.keywords.get("model_path") == entry.base.checkpoint
              and not builder.args)
        if not ok:
            wrong.append(entry.name)
    assert not missing, f"{len(missing)} entries not in supported_VLM, e.g. {missing[:5]}"
    assert not wrong, f"{len(wrong)} entries resolve to the wrong wrapper/mask, e.g. {wrong[:5]}"


def test_names_are_canonical_and_safe(supported):
    ours = [e.name for e in entries()]
    assert len(ours) == len(set(ours))
    theirs = {k.lower() for k, v in supported.items() if not getattr(v, _MARK, False)}
    for entry in entries():
        name = entry.name
        assert parse_entry_name(name) == entry
        assert name == entry.base.entry_name(entry.masked)
        if entry.masked:
            assert name.split(MASK_SEP, 1)[1] == "_".join(entry.masked)
        assert "/" not in name
        assert not any(bad.lower() in name.lower() for bad in FORBIDDEN), name
        assert name.lower() not in theirs, f"{name!r} collides with a VLMEvalKit model name"


def test_eagle1_entries_use_the_eagle_wrapper(supported):
    from vlmeval.vlm.eagle_x import Eagle

    names = [e.name for e in entries(family="eagle1")]
    assert {"eagle_x5", "eagle_x5_13b", "eagle_x4_8b_plus", "eagle_x4_13b_plus"} <= set(names)
    assert len(names) == 2 * 32 + 2 * 16
    b = supported["eagle_x5_mask_clip"]
    assert issubclass(_wrapper_class(b.func), Eagle) and b.keywords["mask"] == ("clip",)
    assert b.keywords["model_path"] == "NVEagle/Eagle-X5-7B"
