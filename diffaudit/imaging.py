"""Image grids for every stage that shows samples: uint8 NHWC arrays -> one PNG."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

MIN_TILE_PIXELS = 64  # automatic scale: small images (16x16 digits) are enlarged to at least this size
PAD_VALUE = 255  # white separators: dataset backgrounds (black digits background) stay distinct


def auto_scale(height: int, width: int) -> int:
    """The integer upscaling factor that makes a tile at least MIN_TILE_PIXELS on its longer side."""
    return max(1, math.ceil(MIN_TILE_PIXELS / max(height, width)))


def image_grid(images: np.ndarray, ncols: int | None = None, scale: int | None = None, pad: int = 1) -> Image.Image:
    """Tile uint8 NHWC images (C = 1 or 3) row by row, upscaled by nearest neighbour, `pad` pixels apart."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected a non-empty uint8 array (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    n, height, width, channels = images.shape
    ncols = min(n, ncols or math.ceil(math.sqrt(n)))
    nrows = math.ceil(n / ncols)
    scale = scale or auto_scale(height, width)
    tiles = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    tile_h, tile_w = height * scale, width * scale
    grid = np.full(
        (nrows * tile_h + (nrows + 1) * pad, ncols * tile_w + (ncols + 1) * pad, channels), PAD_VALUE, dtype=np.uint8
    )
    for i, tile in enumerate(tiles):
        top = pad + (i // ncols) * (tile_h + pad)
        left = pad + (i % ncols) * (tile_w + pad)
        grid[top : top + tile_h, left : left + tile_w] = tile
    return Image.fromarray(grid[:, :, 0] if channels == 1 else grid)


def png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
