"""Attention heat maps drawn over an image with PIL and numpy only (no matplotlib).

For each generated word the captioner's soft attention gives a (grid_h, grid_w) weight map over the
encoder's feature grid, which covers the centre square of the image (`centre_square`: the model
sees no more). `attention_overlays` upsamples each map bilinearly to the image size, colours it
and blends it over the image, one picture per word.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

# Anchor colours of a perceptually ordered map (close to matplotlib's "inferno"), low to high.
COLORMAP_ANCHORS = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 (shape + (3,)) by linear interpolation."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    position = values * (len(COLORMAP_ANCHORS) - 1)
    low = np.floor(position).astype(np.int64).clip(0, len(COLORMAP_ANCHORS) - 2)
    frac = (position - low)[..., None]
    rgb = COLORMAP_ANCHORS[low] * (1 - frac) + COLORMAP_ANCHORS[low + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def upsample(weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (grid_h, grid_w) float map to ``size`` = (width, height)."""
    grid = Image.fromarray(np.asarray(weights, dtype=np.float32))
    return np.asarray(grid.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def attention_overlay(image: Image.Image, weights: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """``image`` with one word's attention map, scaled to [0, 1] by its maximum, blended over it.

    Where the model looks the colour is bright; elsewhere the image is dimmed, so the attended
    region stands out even in a small thumbnail.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    heat = upsample(weights, image.size)  # (H, W)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else np.zeros_like(heat)
    colours = colormap(heat).astype(np.float32)  # (H, W, 3)
    blended = rgb * (1 - alpha) + colours * alpha
    return Image.fromarray(np.rint(blended).clip(0, 255).astype(np.uint8))


def attention_overlays(
    image: Image.Image, attention: object, display_size: int = 160
) -> list[Image.Image]:
    """One overlay per word: ``attention`` is (words, grid_h, grid_w), a tensor or an array.

    The image is first scaled (keeping its aspect ratio) so its longer side is ``display_size``:
    thumbnails of the same size whatever the upload's resolution.
    """
    if hasattr(attention, "detach"):
        attention = attention.detach().float().cpu().numpy()
    maps = np.asarray(attention, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"attention must be (words, grid_h, grid_w), got shape {maps.shape}")
    thumbnail = fit_image(image, display_size)
    return [attention_overlay(thumbnail, weights) for weights in maps]


def centre_square(image: Image.Image) -> Image.Image:
    """The centre square of ``image``: what a captioner sees of it (its eval transform resizes the
    shorter side and crops the centre: `captioner.inference.eval_transform`), and so what its
    attention grid covers."""
    width, height = image.size
    side = min(width, height)
    left, top = round((width - side) / 2), round((height - side) / 2)
    return image.crop((left, top, left + side, top + side))


def fit_image(image: Image.Image, side: int) -> Image.Image:
    """``image`` scaled so that its longer side is ``side`` pixels (up or down)."""
    width, height = image.size
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS
    return image.convert("RGB").resize(size, resample)


def word_labels(words: Sequence[str]) -> list[str]:
    """Thumbnail captions: the word with its position, so repeated words stay apart."""
    return [f"{index + 1}. {word}" for index, word in enumerate(words)]
