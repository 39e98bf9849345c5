"""Dense CRF (Krähenbühl and Koltun 2011) on class probabilities, and a process pool to run it on many images.

The defaults are DeepLab's test-time CRF (docs/protocol.md "Segmentation"): Gaussian kernel sxy=1 compat=3, bilateral
kernel sxy=67 srgb=3 compat=4, 10 mean-field iterations, unary = -log(probability).
pydensecrf is an optional dependency (``pip install 'wsss[crf]'``); stages that are asked for a CRF call
``require_pydensecrf()`` before any work, so a missing package fails at start with the install command.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from wsss.errors import ConfigError, MissingCRFError

INSTALL_HINT = "pip install 'wsss[crf]'   (or directly: pip install pydensecrf2)"
PROB_EPS = 1e-8

T = TypeVar("T")
R = TypeVar("R")


def require_pydensecrf() -> ModuleType:
    """Return ``pydensecrf.densecrf``, or raise naming the install command."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise MissingCRFError(
            f"dense CRF is enabled but pydensecrf cannot be imported ({err}). Install it with:\n"
            f"    {INSTALL_HINT}\n"
            "or turn the CRF off (pseudo.crf=false / crf.enabled=false)."
        ) from err
    return dcrf


@dataclass(frozen=True)
class CRFParams:
    """Kernel parameters of the dense CRF (docs/protocol.md, DeepLab test-time values)."""

    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    iterations: int = 10

    @classmethod
    def from_config(cls, cfg: Any) -> CRFParams:
        """Build from a mapping such as ``cfg.crf`` (other keys, e.g. ``enabled``, are ignored)."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        values = {f.name: get(f.name, None) for f in fields(cls)}
        kwargs = {k: (int(v) if k == "iterations" else float(v)) for k, v in values.items() if v is not None}
        params = cls(**kwargs)
        if params.iterations < 1:
            raise ConfigError(f"crf.iterations={params.iterations}: give at least 1 mean-field iteration")
        return params


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine (C, H, W) class probabilities with a dense CRF on an RGB uint8 (H, W, 3) image.

    ``probs`` need not be normalised: each pixel is divided by its sum (zeros are clamped to 1e-8
    first). Returns the CRF marginals, float32 (C, H, W), summing to 1 over C.
    """
    dcrf = require_pydensecrf()
    params = params or CRFParams()
    probs = np.asarray(probs, dtype=np.float32)
    image = np.asarray(image)
    if probs.ndim != 3:
        raise ValueError(f"probs must be (C, H, W), got shape {probs.shape}")
    n_labels, height, width = probs.shape
    if image.dtype != np.uint8 or image.shape != (height, width, 3):
        raise ValueError(
            f"image must be RGB uint8 of shape ({height}, {width}, 3) to match probs {probs.shape}; "
            f"got {image.dtype} {image.shape}"
        )
    probs = np.maximum(probs, PROB_EPS)
    probs /= probs.sum(axis=0, keepdims=True)
    unary = np.ascontiguousarray(-np.log(probs).reshape(n_labels, -1))
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.require(image, requirements=["C", "W"]),  # pydensecrf needs a writable buffer
        compat=params.bilateral_compat,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)


def crf_labels(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Labels (H, W) uint8: each pixel's most probable channel of the dense-CRF marginals of ``probs``.

    Channels that are zero everywhere can never win and are left out of the CRF (for pseudo labels
    only background and the image's classes take part); a single remaining channel needs no CRF.
    """
    probs = np.asarray(probs, dtype=np.float32)
    channels = np.flatnonzero(probs.reshape(probs.shape[0], -1).max(axis=1) > 0)
    if channels.size <= 1:
        return np.full(probs.shape[1:], channels[0] if channels.size else 0, np.uint8)
    q = dense_crf(image, probs[channels], params)
    return channels[q.argmax(axis=0)].astype(np.uint8)


def _init_worker(initializer: Callable[..., None] | None, initargs: tuple) -> None:
    """Worker start: one thread per process (the pool is the parallelism), then the caller's initializer."""
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass
    if initializer is not None:
        initializer(*initargs)


def _context() -> mp.context.BaseContext:
    """``forkserver`` where available: workers start from a clean process, not a copy of one that
    holds torch / OpenCV thread pools (forking those can deadlock)."""
    methods = mp.get_all_start_methods()
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def _progress(results: Iterable[R], total: int, desc: str, enabled: bool) -> Iterator[R]:
    if not enabled:
        yield from results
        return
    from rich.progress import track

    yield from track(results, total=total, description=desc, transient=False)


def crf_executor(workers: int) -> Executor | None:
    """A pool of ``workers`` CRF processes for work submitted one item at a time (None for
    ``workers <= 1``: run in this process); its workers start like ``crf_map``'s."""
    if workers <= 1:
        return None
    return ProcessPoolExecutor(
        max_workers=int(workers), mp_context=_context(), initializer=_init_worker, initargs=(None, ())
    )


def crf_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int = 1,
    desc: str = "dense CRF",
    progress: bool = True,
    chunksize: int = 1,
    ordered: bool = True,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> list[R]:
    """Apply ``fn`` to every item in a pool of ``workers`` processes, with a progress bar.

    ``fn`` and the items must be picklable (a module-level function; file paths or indices rather than
    big arrays keep the transfer cheap). State every call needs (a dataset, settings) goes once per
    worker through ``initializer(*initargs)``. ``workers <= 1`` runs in this process (the initializer
    too). Results come back in item order unless ``ordered=False``.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        if initializer is not None:
            initializer(*initargs)
        return list(_progress(map(fn, items), len(items), desc, progress))
    n_proc = min(int(workers), len(items))
    with _context().Pool(n_proc, initializer=_init_worker, initargs=(initializer, initargs)) as pool:
        mapper = pool.imap if ordered else pool.imap_unordered
        return list(_progress(mapper(fn, items, chunksize=chunksize), len(items), desc, progress))


__all__ = [
    "CRFParams",
    "INSTALL_HINT",
    "MissingCRFError",
    "crf_executor",
    "crf_labels",
    "crf_map",
    "dense_crf",
    "require_pydensecrf",
]
