"""Answer Hugging Face Hub look-ups from a local folder, offline, for tiny real-class models.

Upstream code hard-codes hub ids (``openai/clip-vit-large-patch14-336``, SAM, Pix2Struct,
open_clip towers) and calls ``from_pretrained`` with no ``cache_dir``.  The self-tests save
tiny random models under those ids in a throw-away cache; this context manager points the
already-imported libraries at it.  Setting ``HF_HUB_CACHE`` alone is not enough: transformers
and huggingface_hub read it into module globals at import time, so those are swapped too and
restored afterwards.  Used by tests and ``encred doctor`` only, never by a real load.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

from .envscope import scoped_env

_ENV = ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# transformers.utils.hub globals that hold the cache folder or the offline switch (names vary by version)
_TRANSFORMERS_GLOBALS = ("TRANSFORMERS_CACHE", "HF_HUB_CACHE", "PYTORCH_TRANSFORMERS_CACHE", "_is_offline_mode")


@contextlib.contextmanager
def offline_hub(cache: Path | str) -> Iterator[Path]:
    """Within the block, hub ids resolve from ``cache`` only (``<cache>/models--org--name/...``)."""
    import huggingface_hub.constants as hc

    tu = sys.modules.get("transformers.utils.hub")
    if tu is None:
        import transformers.utils.hub as tu
    cache = str(cache)
    saved = [(hc, "HF_HUB_CACHE", hc.HF_HUB_CACHE), (hc, "HF_HUB_OFFLINE", hc.HF_HUB_OFFLINE)]
    saved += [(tu, name, getattr(tu, name)) for name in _TRANSFORMERS_GLOBALS if hasattr(tu, name)]
    with scoped_env(**dict(zip(_ENV, (cache, "1", "1")))):
        hc.HF_HUB_CACHE, hc.HF_HUB_OFFLINE = cache, True
        for mod, name, _ in saved[2:]:
            setattr(mod, name, True if name == "_is_offline_mode" else cache)
        try:
            yield Path(cache)
        finally:
            for mod, name, value in saved:
                setattr(mod, name, value)
