"""Image grids for figures (Figure-1-style map comparisons, pseudo-label panels)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wsss.artifacts import atomic_path


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
