"""Rendering a :class:`~tasks.datasets.world_scene.Scene` to an RGB image.

The background is layered value noise (blotches plus grain) so that shapes cannot be found by a
single threshold, shapes are drawn at 2x and downsampled (anti-aliased edges), and a final grain
keeps object colours from being one exact RGB value. Everything random comes from the scene's
own seeds, so rendering is a pure function of the scene.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tasks.datasets.world_scene import COLOURS, Obj, Scene, Sign

SUPERSAMPLE = 2


def _noise_layer(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random grid of ``cells`` x ``cells`` upsampled bicubically."""
    grid = rng.uniform(0, 255, size=(cells, cells)).astype(np.uint8)
    up = Image.fromarray(grid, "L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 127.5 - 1.0


def render_background(scene: Scene, size: int) -> np.ndarray:
    bg = scene.background
    rng = np.random.default_rng(bg.seed)
    base = np.array(bg.rgb, dtype=np.float32)
    lum = 26 * _noise_layer(rng, size, 5) + 14 * bg.roughness * _noise_layer(rng, size, 18)
    tint = np.stack([8 * _noise_layer(rng, size, 4) for _ in range(3)], axis=-1)
    img = base[None, None, :] + lum[..., None] + tint
    img += rng.normal(0, 7 * bg.roughness, size=img.shape)
    return np.clip(img, 0, 255)


def _polygon(o: Obj, scale: float) -> list[tuple[float, float]]:
    cx, cy, r = o.x * scale, o.y * scale, o.r * scale
    rot = math.radians(o.rotation)

    def ring(n: int, radius: float, offset: float) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(offset + rot + 2 * math.pi * k / n), cy + radius * math.sin(offset + rot + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if o.shape == "square":
        return ring(4, r * 1.05, math.pi / 4)
    if o.shape == "triangle":
        return [(x, y + r * 0.18) for x, y in ring(3, r * 1.15, -math.pi / 2)]
    if o.shape == "diamond":
        pts = ring(4, r, -math.pi / 2)
        return [(cx + (x - cx) * 0.72, y) for x, y in pts]  # narrower than tall
    if o.shape == "hexagon":
        return ring(6, r, 0.0)
    if o.shape == "star":
        outer, inner = ring(5, r * 1.1, -math.pi / 2), ring(5, r * 0.45, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if o.shape == "cross":
        a, b = r * 0.95, r * 0.34
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    raise ValueError(f"unknown shape {o.shape!r}")


def _draw_object(draw: ImageDraw.ImageDraw, o: Obj, scale: float) -> None:
    fill = COLOURS[o.colour]
    if o.shape == "circle":
        cx, cy, r = o.x * scale, o.y * scale, o.r * scale
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(o, scale), fill=fill)


def _draw_sign(draw: ImageDraw.ImageDraw, sign: Sign, scale: float) -> None:
    """A light plate with a dark border and the word in dark letters, as large as fits."""
    x0, y0 = (sign.x - sign.w / 2) * scale, (sign.y - sign.h / 2) * scale
    x1, y1 = (sign.x + sign.w / 2) * scale, (sign.y + sign.h / 2) * scale
    border = max(1, round(0.012 * scale))
    draw.rectangle((x0, y0, x1, y1), fill=(236, 230, 212), outline=(40, 36, 30), width=border)
    font_px = int(sign.h * scale * 0.72)
    while font_px > 6:
        font = ImageFont.load_default(size=font_px)
        left, top, right, bottom = draw.textbbox((0, 0), sign.word, font=font)
        if right - left <= (x1 - x0) * 0.88 and bottom - top <= (y1 - y0) * 0.8:
            break
        font_px -= 1
    tx = (x0 + x1) / 2 - (left + right) / 2
    ty = (y0 + y1) / 2 - (top + bottom) / 2
    draw.text((tx, ty), sign.word, fill=(20, 20, 24), font=font)


def render_scene(scene: Scene, size: int = 224) -> Image.Image:
    """The scene as a ``size`` x ``size`` RGB image."""
    big = size * SUPERSAMPLE
    canvas = Image.fromarray(render_background(scene, big).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    if scene.sign is not None:
        _draw_sign(draw, scene.sign, big)
    for o in scene.objects:
        _draw_object(draw, o, big)
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    grain = np.random.default_rng(scene.background.seed + 1).normal(0, 3.0, size=(size, size, 3))
    return Image.fromarray(np.clip(np.asarray(small, dtype=np.float32) + grain, 0, 255).astype(np.uint8), "RGB")
