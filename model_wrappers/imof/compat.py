"""Import and load the MMVP repository's LLaVA fork (I-MoF) without editing any of its files.

The fork (github.com/tsb0601/MMVP, ``LLaVA/llava``) pins transformers 4.31,
under which ms-vlmeval does not import (``transformers.cache_utils``).  Its code
runs under transformers 4.44 (recipe ``model_wrappers/imof/recipe.txt``) with
two differences handled here:

* ``llava/model/language_model/llava_llama.py`` calls
  ``AutoConfig.register("llava", LlavaConfig)`` at import time; transformers
  >= 4.36 owns the name ``llava`` (LLaVA-1.5 in transformers), so the import
  raises ``'llava' is already used by a Transformers config``.  :func:`import_fork`
  skips exactly that one registration while the fork imports.  Nothing the
  I-MoF loader uses needs it: ``load_pretrained_model`` builds
  ``LlavaLlamaForCausalLM`` by class, whose ``config_class`` is the fork's
  ``LlavaConfig``.  What is lost: ``AutoConfig.from_pretrained(<MoF checkpoint>)``
  returns transformers' ``LlavaConfig`` instead of the fork's -- used only by the
  fork's LoRA / ``model_base`` loading paths, which I-MoF does not take.
* ``llava/model/__init__.py`` imports the fork's MPT language model, whose
  ``mpt/hf_prefixlm_converter.py`` imports private helpers that transformers 4.44
  no longer has (``transformers.models.bloom.modeling_bloom._expand_mask``).
  I-MoF is LLaMA-based and never touches MPT, so when that helper is missing
  :func:`import_fork` puts a placeholder module in place of
  ``llava.model.language_model.llava_mpt`` whose two classes raise on use.
  What is lost: the fork's LLaVA-MPT checkpoints (not I-MoF) cannot load.
* ``load_pretrained_model`` moves the DINO tower to ``'cuda'`` whatever
  ``device`` it is given.  :func:`dino_tower_device` redirects that one move to
  another device; the wrapper uses it only when asked for ``device='cpu'``,
  which exists for the CPU test suite (a 13B model is not run on CPU).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from typing import Any, Iterator

FORK_METHOD = "prepare_inputs_labels_for_multimodal_withdino"
"""A method only the MMVP fork has: tells the fork from upstream LLaVA."""

skipped_registrations: list[str] = []
"""What :func:`import_fork` did not register (for ``encred doctor`` and the tests)."""


@contextlib.contextmanager
def _tolerate_llava_config_name() -> Iterator[None]:
    """While the fork imports, ``AutoConfig.register('llava', <fork config>)`` leaves transformers' own in place."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    saved = AutoConfig.__dict__["register"]
    original = AutoConfig.register

    def register(model_type: str, config: Any, exist_ok: bool = False) -> None:
        if model_type == "llava" and model_type in CONFIG_MAPPING and CONFIG_MAPPING[model_type] is not config:
            skipped_registrations.append(f"AutoConfig.register('llava', {config.__module__}.{config.__qualname__})")
            return
        # transformers < 4.34 has no exist_ok keyword (the fork's pinned 4.31)
        original(model_type, config, **({"exist_ok": True} if exist_ok else {}))

    AutoConfig.register = staticmethod(register)
    try:
        yield
    finally:
        AutoConfig.register = saved


MPT_MODULE = "llava.model.language_model.llava_mpt"


def _mpt_placeholder() -> types.ModuleType:
    """Stands in for the fork's ``llava_mpt`` (see the module docstring); its classes raise when used."""
    why = ("vlmeval-encred: the MMVP fork's LLaVA-MPT model was not imported: its MPT code needs "
           "transformers 4.31 (transformers.models.bloom.modeling_bloom._expand_mask); I-MoF uses "
           "LlavaLlamaForCausalLM only")

    class _Unavailable:
        def __init__(self, *_a: Any, **_k: Any) -> None:
            raise ImportError(why)

        @classmethod
        def from_pretrained(cls, *_a: Any, **_k: Any) -> Any:
            raise ImportError(why)

    mod = types.ModuleType(MPT_MODULE, why)
    mod.LlavaMPTForCausalLM = type("LlavaMPTForCausalLM", (_Unavailable,), {})
    mod.LlavaMPTConfig = type("LlavaMPTConfig", (_Unavailable,), {})
    mod.__encred_placeholder__ = True
    return mod


def _mpt_importable() -> bool:
    from transformers.models.bloom import modeling_bloom

    return hasattr(modeling_bloom, "_expand_mask")


def _source_on_path() -> str:
    """Where ``llava`` will come from: ENCRED_SRC_MMVP, else an installed ``llava``, else the registered clone (encred sources)."""
    from vlmeval_encred import upstream

    repo = upstream.get("mmvp")
    if not os.environ.get(repo.env_var) and importlib.util.find_spec("llava") is not None:
        return "installed"
    root = str(upstream.import_root("mmvp"))
    if root not in sys.path:
        sys.path.insert(0, root)
    return root


def is_fork() -> bool:
    """Whether the imported ``llava`` is the MMVP fork (its arch module has the interleaving method)."""
    arch = sys.modules.get("llava.model.llava_arch")
    return arch is not None and hasattr(getattr(arch, "LlavaMetaForCausalLM", None), FORK_METHOD)


def import_fork() -> Any:
    """Import the fork's ``llava`` package (see the module docstring); return it.

    Raises ImportError naming the file found when ``llava`` is some other LLaVA."""
    mod = sys.modules.get("llava")
    if mod is None:
        where = _source_on_path()
        if MPT_MODULE not in sys.modules and not _mpt_importable():
            sys.modules[MPT_MODULE] = _mpt_placeholder()
            skipped_registrations.append(f"{MPT_MODULE} (placeholder: MPT needs transformers 4.31)")
        with _tolerate_llava_config_name():
            mod = importlib.import_module("llava")
            importlib.import_module("llava.model.llava_arch")
    else:
        where = "already imported"
    if not is_fork():
        raise ImportError(
            f"the `llava` package at {getattr(mod, '__file__', '?')} ({where}) is not the MMVP repository's LLaVA "
            f"fork (no LlavaMetaForCausalLM.{FORK_METHOD}); I-MoF needs github.com/tsb0601/MMVP's LLaVA folder: "
            "set ENCRED_SRC_MMVP to a clone of MMVP, or pip install -e MMVP/LLaVA --no-deps")
    return mod


@contextlib.contextmanager
def dino_tower_device(device: str) -> Iterator[None]:
    """While the fork's ``load_pretrained_model`` runs, its ``dino_vision_tower.to(device='cuda')`` goes to ``device``.

    Only for ``device`` other than ``cuda`` (the CPU tests); with ``cuda`` nothing changes."""
    if str(device).startswith("cuda"):
        yield
        return
    from llava.model.multimodal_encoder.dino_encoder import DINOVisionTower

    had_own = "to" in DINOVisionTower.__dict__
    saved = DINOVisionTower.__dict__.get("to")
    inherited = DINOVisionTower.to

    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = device
        args = tuple(device if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        return inherited(self, *args, **kwargs)

    DINOVisionTower.to = to
    try:
        yield
    finally:
        if had_own:
            DINOVisionTower.to = saved
        else:
            del DINOVisionTower.to


@contextlib.contextmanager
def offline_hub_cache(cache_dir: str) -> Iterator[None]:
    """Resolve hub ids (the fork's hard-coded CLIP id) from ``cache_dir``, offline, within the block.

    For tests and self-tests only (see :mod:`vlmeval_encred.realcode.fakehub`)."""
    from vlmeval_encred.realcode.fakehub import offline_hub

    with offline_hub(cache_dir):
        yield
