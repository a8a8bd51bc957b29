"""Atomic file writes: every file autoprune writes goes through a temporary file and a rename.

A kill at any moment leaves either the old file or the new one, never half a file; two processes
writing the same path (two searches training one cached baseline) never mix their bytes.

Example:
    >>> write_json("results/r1/state.json", {"finished": False})
    >>> with atomic_path("results/r1/baseline.pt") as tmp:
    ...     torch.save(state, tmp)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = ["atomic_path", "write_text", "write_json"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it is renamed onto ``path``.

    The temporary name is unique per process and thread, and is removed if the block raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _finite(x: Any) -> Any:
    """``x`` with NaN and infinities replaced by None, at any depth (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON (keys sorted, NaN and infinities as null) atomically."""
    write_text(path, json.dumps(_finite(data), indent=2, sort_keys=True) + "\n")
