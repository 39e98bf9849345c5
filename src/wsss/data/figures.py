"""Image grids for figures (Figure-1-style map comparisons, pseudo-label panels)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsss.constants import IGNORE_INDEX
from wsss.data.maps_io import load_maps
from wsss.pipeline.artifacts import atomic_path


def overlay_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] heat map (H, W) onto an RGB uint8 image with a blue-to-red colour ramp."""
    heat = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    if heat.shape != image.shape[:2]:
        heat = np.asarray(Image.fromarray(heat).resize(image.shape[1::-1], Image.BILINEAR))
    ramp = np.stack([heat, 1.0 - np.abs(2.0 * heat - 1.0), 1.0 - heat], axis=-1) * 255.0
    return (alpha * ramp + (1.0 - alpha) * image.astype(np.float32)).clip(0, 255).astype(np.uint8)


def title_font(size: int = 12) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]:
    """DejaVu Sans where the system has it, else Pillow's bundled font (which has no dagger glyph);
    returns the font and how to write "†" with it."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), "†"
    except OSError:
        return ImageFont.load_default(size=size), "-dagger"


def save_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    titles: Sequence[str] | None = None,
    cell: int = 160,
) -> Path:
    """Save RGB uint8 panels as a grid PNG (one list per row), with optional column titles."""
    n_cols = max(len(r) for r in rows)
    top = 18 if titles else 0
    canvas = Image.new("RGB", (n_cols * cell, top + len(rows) * cell), "white")
    draw = ImageDraw.Draw(canvas)
    font, dagger = title_font()
    for c, title in enumerate(titles or []):
        draw.text((c * cell + 4, 3), str(title).replace("†", dagger), fill="black", font=font)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            img = Image.fromarray(np.asarray(panel, dtype=np.uint8)).convert("RGB")
            img.thumbnail((cell, cell))
            canvas.paste(img, (c * cell, top + r * cell))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def _heat(maps_dir: Path, image_id: str) -> np.ndarray | None:
    path = Path(maps_dir) / f"{image_id}.npz"
    if not path.is_file():
        return None
    _, maps = load_maps(path, IGNORE_INDEX)  # any class count: only the top value is drawn
    if maps.shape[0] == 0:
        return np.zeros(maps.shape[1:], dtype=np.float32)
    return np.maximum(maps.max(axis=0), 0.0)  # absent classes count as zero maps


def figure1(
    image_ids: Sequence[str],
    voc_dataset: Any,
    map_dirs: Mapping[str, str | Path],
    out_path: str | Path,
    cell: int = 160,
) -> Path:
    """A Figure-1-style grid: one row per image, columns image | one heat map per map set.

    ``map_dirs`` maps a column title (e.g. "CAM", "DRS", "DRS†") to a folder of ``<id>.npz``; folders
    that do not exist are left out, and an image missing from a folder gets a grey panel. The heat map
    is the max over the image's present classes, resized to the image.
    """
    columns = {title: Path(d) for title, d in map_dirs.items() if Path(d).is_dir()}
    index = {image_id: i for i, image_id in enumerate(voc_dataset.ids)}
    rows = []
    for image_id in image_ids:
        if image_id not in index:
            raise KeyError(f"figure1: image {image_id!r} is not in the dataset's split")
        image = np.asarray(voc_dataset.image(index[image_id]), dtype=np.uint8)
        row = [image]
        for folder in columns.values():
            heat = _heat(folder, image_id)
            row.append(np.full_like(image, 128) if heat is None else overlay_heatmap(image, heat))
        rows.append(row)
    if not rows:
        raise ValueError("figure1: no image ids given")
    rows = [[_fit(panel, cell) for panel in row] for row in rows]
    return save_grid(rows, out_path, titles=["image", *columns], cell=cell)


def _fit(panel: np.ndarray, cell: int) -> np.ndarray:
    """Scale a panel so its longer side fills the cell (small toy images are enlarged too)."""
    h, w = panel.shape[:2]
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(panel).resize(size, Image.BILINEAR))
