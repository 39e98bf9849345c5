"""The one reader of torch files in wsss (stage checkpoints, weights files, files to adopt) and the one
check for NaN or infinite weights.

Every file is read with ``torch.load(weights_only=True)`` (tensors and plain containers only, never
arbitrary pickled code); a file that cannot be read raises the caller's error class with the reason and
the fix, so each caller keeps the words that fit its file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wsss.errors import WsssError


def load_torch_file(
    path: str | Path, *, error: type[WsssError], what: str, fix: str, name: str = "", mmap: bool = False
) -> Any:
    """The object in a torch file; an unreadable one raises ``error("<name>: <what> (<reason>); <fix>")``.

    ``what`` says what the file failed to be (``"not a readable checkpoint"``); ``name`` is how the
    message names the file (default: its path); ``mmap=True`` maps the tensors instead of reading them
    (for a look at a checkpoint's counters)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # truncated zip, pickle error, unsupported global: many types
        reason = str(err).splitlines()[0] if str(err) else ""
        raise error(f"{name or path}: {what} ({type(err).__name__}: {reason}); {fix}") from err


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding NaN or infinite values."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]
