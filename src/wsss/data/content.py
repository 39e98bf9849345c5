"""What a dataset holds, by content: the fingerprint that names data in artifact identities.

An artifact's identity names the data it read by ``data.content.<split>``: a hash of the split's list
file and of the bytes of every image, mask (and, where the stage uses them, saliency map and the labels
file) the list names - never by the folder it sits in. Moving or copying the data keeps every identity
(everything is reused); changing one mask changes the fingerprint of the splits that hold it, so exactly
the artifacts that read it are remade.

File digests are cached per folder (``digests.json`` beside the verification markers, keyed by name,
size and modification time), so only new or changed files are read again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from wsss.data.toy import ensure_toy
from wsss.data.voc import LIST_DIR, MASK_DIRS, resolve_voc_root
from wsss.pipeline.artifacts import write_json
from wsss.pipeline.registry import SALIENCY, STAGES

log = logging.getLogger(__name__)


class DigestCache:
    """sha1 of files, remembered by (path, size, mtime) in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.known: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def digest(self, file: Path) -> str:
        """The file's sha1, or ``-`` when it does not exist."""
        try:
            st = file.stat()
        except FileNotFoundError:
            return "-"
        key = str(file.resolve())
        cached = self.known.get(key)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return str(cached[2])
        sha = hashlib.sha1()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
        self.known[key] = [st.st_size, st.st_mtime_ns, sha.hexdigest()]
        self.changed = True
        return sha.hexdigest()

    def digests(self, files: list[Path], threads: int = 4) -> list[str]:
        with ThreadPoolExecutor(max(1, threads)) as pool:
            return list(pool.map(self.digest, files))

    def save(self) -> None:
        if self.changed:
            write_json(self.path, self.known)
            self.changed = False


def split_fingerprint(
    root: str | Path,
    split: str,
    cache: DigestCache,
    saliency_dir: str | Path | None = None,
    labels_file: str | Path | None = None,
) -> str:
    """A 20-hex-digit hash of the split's list file and the bytes of every file it names (images, masks
    in any mask folder, saliency maps when ``saliency_dir`` is given, the labels file when given)."""
    voc = resolve_voc_root(root)
    list_file = voc / LIST_DIR / f"{split}.txt"
    ids = list_file.read_text().split() if list_file.is_file() else []
    files = [voc / "JPEGImages" / f"{i}.jpg" for i in ids]
    files += [voc / folder / f"{i}.png" for folder in MASK_DIRS for i in ids]
    if saliency_dir:
        files += [Path(str(saliency_dir)).expanduser() / f"{i}.png" for i in ids]
    parts = [f"list:{cache.digest(list_file)}"]
    if labels_file:
        parts.append(f"labels:{cache.digest(Path(str(labels_file)).expanduser())}")
    root_dirs = (voc, Path(str(saliency_dir)).expanduser()) if saliency_dir else (voc,)
    for file, digest in zip(files, cache.digests(files), strict=True):
        base = next(d for d in root_dirs if file.is_relative_to(d))
        parts.append(f"{file.relative_to(base)}:{digest}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]


def marker_dir(cfg: Any) -> Path:
    """Where data checks and file digests are remembered: ``data.cache_dir``/verified if set, else
    ``<paths.runs>/.verified``."""
    cache = cfg.data.get("cache_dir")
    return Path(str(cache)) / "verified" if cache else Path(str(cfg.paths.runs)) / ".verified"


def cache_path(cfg: Any) -> Path:
    """The file-digest cache: ``digests.json`` in ``marker_dir``."""
    return marker_dir(cfg) / "digests.json"


def attach_content(cfg: DictConfig, stage_names: Iterable[str] | None = None) -> dict[str, str]:
    """Set ``cfg.data.content`` to the fingerprints of the splits the stages read (every declared stage
    when None), generating toy data first; the identities of those stages then name their data by it."""
    names = list(STAGES) if stage_names is None else list(stage_names)
    keys = list(dict.fromkeys(k for name in names for k in STAGES[name].content_keys(cfg)))
    if not keys:
        return {}
    ensure_toy(cfg.data)
    cache = DigestCache(cache_path(cfg))
    root, labels_file = str(cfg.data.root), cfg.data.get("labels_file")
    content = {}
    for key in keys:
        split = key.removesuffix(SALIENCY)
        saliency_dir = cfg.data.get("saliency_dir") if key.endswith(SALIENCY) else None
        content[key] = split_fingerprint(root, split, cache, saliency_dir, labels_file)
    cache.save()
    known = OmegaConf.to_container(cfg.data.content) if cfg.data.get("content") else {}
    with open_dict(cfg):
        cfg.data.content = {**known, **content}
    return content
