"""One log line per event.

The ``lightning`` package gives its logger a console handler of its own when imported *and* lets its
records propagate to the root logger, where Hydra's job logging already prints them: every Lightning
INFO line then appears twice ("INFO: ..." and "[time][lightning...][INFO] ..."). Once Hydra (or any
caller) has configured the root logger, ``single_handlers`` removes those package handlers so each
record is printed once, by the root's handlers, in one format.
"""

from __future__ import annotations

import logging

PACKAGE_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
"""Loggers that install a console handler of their own on import."""


def single_handlers() -> list[str]:
    """Drop the console handlers of ``PACKAGE_LOGGERS`` when the root logger has handlers (their records
    still reach the root); returns the names of the loggers changed. Imports ``lightning`` first, so its
    import-time handler exists before it is removed."""
    import lightning  # noqa: F401 - installs the handler this removes
    import lightning.pytorch  # noqa: F401

    root = logging.getLogger()
    if not root.handlers:
        return []  # nobody else prints: keep Lightning's own output
    changed = []
    for name in PACKAGE_LOGGERS:
        logger = logging.getLogger(name)
        console = [h for h in logger.handlers if type(h) is logging.StreamHandler and h not in root.handlers]
        for handler in console:
            logger.removeHandler(handler)
        if console or not logger.propagate:
            logger.propagate = True
            changed.append(name)
    return changed
