"""Environment variables set for one block and restored after it.

VLMEvalKit reads ``$LMUData``, ``PRED_FORMAT`` and the hub's offline switches from the
environment at call time, so the in-process checks (tests, benchmarks, the fake hub) set
them for a block; one helper so every such block restores them the same way (a variable
that was unset is removed again, not left as an empty string)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


@contextlib.contextmanager
def scoped_env(**values: str) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block; restore the previous values (or absence) after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
