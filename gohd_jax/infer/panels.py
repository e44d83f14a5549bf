"""Side-by-side video panels with a caption above each (``make demo``'s videos).

    frames = side_by_side([generated, reference], ["generated", "reference"], zoom=3)
    # uint8 [T, CAPTION + H*3, 2*W*3, 3]

Every panel is uint8 [T,H,W,3] with the same T and H (widths may differ); each is enlarged
``zoom`` x by pixel repetition (the demo's 64 px faces are small on screen) and captioned with
Pillow's built-in bitmap font (nothing to download). The output's height and width are even, as
H.264 in yuv420p needs.
"""

from __future__ import annotations

import numpy as np

CAPTION = 16  # caption strip height, px (before rounding the total up to even)


def caption_strip(texts: list[str], widths: list[int], height: int = CAPTION) -> np.ndarray:
    """uint8 [height, sum(widths), 3]: each text, left-aligned, over its panel's width."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (int(sum(widths)), height), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x = 0
    for text, w in zip(texts, widths):
        draw.text((x + 4, 2), text, fill=(235, 235, 235), font=font)
        x += w
    return np.asarray(img)


def side_by_side(panels: list[np.ndarray], captions: list[str], zoom: int = 3) -> np.ndarray:
    """uint8 [T, H', W', 3]: the panels [T,H,W_i,3] enlarged ``zoom`` x, left to right, under
    their captions; H' and W' rounded up to even by a dark border."""
    if len(panels) != len(captions):
        raise ValueError(f"{len(panels)} panels but {len(captions)} captions")
    lengths = {len(p) for p in panels}
    heights = {p.shape[1] for p in panels}
    if len(lengths) != 1 or len(heights) != 1:
        raise ValueError(f"panels must share their frame count and height, got lengths {sorted(lengths)} "
                         f"and heights {sorted(heights)}")
    big = [np.repeat(np.repeat(np.asarray(p, np.uint8), zoom, axis=1), zoom, axis=2) for p in panels]
    body = np.concatenate(big, axis=2)
    strip = caption_strip(captions, [b.shape[2] for b in big])
    out = np.concatenate([np.broadcast_to(strip, (len(body),) + strip.shape), body], axis=1)
    pad_h, pad_w = out.shape[1] % 2, out.shape[2] % 2
    if pad_h or pad_w:
        out = np.pad(out, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=24)
    return np.ascontiguousarray(out)
