"""Scene graphs of the procedural ``world``: objects with shape, colour, size and position.

A scene is plain data (frozen dataclasses, normalised coordinates) so that captions, questions
and the rendered image are all derived from one source of truth, and so that a scene is fully
determined by its seed. Coordinates are in [0, 1] with y growing downwards, as in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
PLURAL: dict[str, str] = {s: (s + "es" if s.endswith(("ss", "x", "sh", "ch")) else s + "s") for s in SHAPES}
PLURAL["cross"] = "crosses"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 38, 38),
    "green": (34, 160, 64),
    "blue": (38, 84, 222),
    "yellow": (242, 212, 36),
    "purple": (138, 54, 186),
    "orange": (246, 136, 24),
    "white": (246, 246, 246),
    "black": (22, 22, 22),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

SIZES: dict[str, tuple[float, float]] = {"small": (0.060, 0.080), "large": (0.115, 0.140)}
"""Radius ranges (fraction of the image side) per size class; far apart so 'large' is unambiguous."""

SIGN_WORDS: tuple[str, ...] = (
    "taxi", "stop", "open", "exit", "cafe", "hotel", "bank", "park", "zoo", "bus",
    "shop", "sale", "pizza", "books", "music", "bakery", "train", "push", "pull", "menu",
)

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six")


@dataclass(frozen=True)
class Obj:
    """One shape: centre (x, y) and radius in image-side units, rotation in degrees."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    r: float
    rotation: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Sign:
    """A plate with a painted word; centre (x, y) and plate size (w, h) in image-side units."""

    word: str
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Background:
    """Parameters of the textured background (the texture itself comes from ``seed``)."""

    rgb: tuple[int, int, int]
    tone: str
    seed: int
    roughness: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: Background
    sign: Sign | None = None


def rng_for(*key: int) -> np.random.Generator:
    """A generator seeded by a tuple of non-negative ints (stable across machines and numpy versions)."""
    return np.random.default_rng(np.random.SeedSequence(list(key)))


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def sample_background(rng: np.random.Generator) -> Background:
    """A muted, mid-value base colour: never as saturated as the object colours."""
    tones = {
        "grey": (128, 128, 128),
        "greenish": (112, 134, 110),
        "bluish": (108, 120, 142),
        "brownish": (138, 118, 96),
        "sandy": (160, 148, 118),
        "slate": (96, 104, 116),
    }
    tone = _pick(rng, tuple(tones))
    base = np.array(tones[tone], dtype=float) + rng.normal(0, 6, size=3)
    rgb = tuple(int(v) for v in np.clip(base, 60, 190))
    return Background(rgb=rgb, tone=tone, seed=int(rng.integers(2**31)), roughness=float(rng.uniform(0.5, 1.0)))


def sample_rotation(rng: np.random.Generator, shape: str) -> float:
    """A small tilt in degrees; kept smaller for squares and diamonds so one never looks like the other."""
    limit = 12.0 if shape in ("square", "diamond") else 20.0
    return float(rng.uniform(-limit, limit))


def _clear_of_sign(x: float, y: float, r: float, sign: Sign | None, gap: float) -> bool:
    if sign is None:
        return True
    cx = min(max(x, sign.x - sign.w / 2), sign.x + sign.w / 2)
    cy = min(max(y, sign.y - sign.h / 2), sign.y + sign.h / 2)
    return (x - cx) ** 2 + (y - cy) ** 2 >= (r + gap) ** 2


def _place(
    rng: np.random.Generator, r: float, placed: list[tuple[float, float, float]], sign: Sign | None
) -> tuple[float, float] | None:
    """Rejection-sample a centre that keeps a gap to every placed shape and to the sign."""
    gap = 0.03
    for _ in range(200):
        x = float(rng.uniform(r + 0.02, 1 - r - 0.02))
        y = float(rng.uniform(r + 0.02, 1 - r - 0.02))
        if _clear_of_sign(x, y, r, sign, gap) and all(
            (x - px) ** 2 + (y - py) ** 2 >= (r + pr + gap) ** 2 for px, py, pr in placed
        ):
            return x, y
    return None


def sample_scene(rng: np.random.Generator, *, max_objects: int = 5, sign_probability: float = 0.35) -> Scene:
    """Draw a scene: 1..max_objects shapes, attributes often shared so that counts vary."""
    background = sample_background(rng)
    placed: list[tuple[float, float, float]] = []
    sign: Sign | None = None
    if rng.random() < sign_probability:
        word = _pick(rng, SIGN_WORDS)
        h = 0.15
        w = min(0.9, (0.34 * len(word) + 0.35) * h)
        x = float(rng.uniform(w / 2 + 0.02, 1 - w / 2 - 0.02))
        y = float(rng.uniform(h / 2 + 0.02, 1 - h / 2 - 0.02))
        sign = Sign(word, x, y, w, h)  # placed first, so it always fits
    n = int(rng.integers(1, max_objects + 1))
    objects: list[Obj] = []
    for _ in range(n):
        shape, colour = _pick(rng, SHAPES), _pick(rng, COLOUR_NAMES)
        if objects and rng.random() < 0.45:  # share an attribute with an earlier object
            other = objects[int(rng.integers(len(objects)))]
            which = rng.random()
            if which < 0.4:
                shape = other.shape
            elif which < 0.8:
                colour = other.colour
            else:
                shape, colour = other.shape, other.colour
        size = "large" if rng.random() < 0.5 else "small"
        r = float(rng.uniform(*SIZES[size]))
        pos = _place(rng, r, placed, sign)
        if pos is None:
            continue
        placed.append((pos[0], pos[1], r))
        objects.append(Obj(shape, colour, size, pos[0], pos[1], r, sample_rotation(rng, shape)))
    if not objects:  # the canvas is never empty of shapes
        r = float(rng.uniform(*SIZES["small"]))
        pos = _place(rng, r, placed, sign) or (0.5, 0.5)
        objects.append(Obj(_pick(rng, SHAPES), _pick(rng, COLOUR_NAMES), "small", pos[0], pos[1], r))
    return Scene(tuple(objects), background, sign)


# --- relations used by captions and questions -------------------------------------------------

LEFT_MARGIN = 0.10
"""How much further left (in image-side units) an object must be to count as 'left of' another."""


def left_of(a: Obj, b: Obj) -> bool | None:
    """True/False when clearly left/right of; None when too close horizontally to say."""
    dx = b.x - a.x
    if dx > LEFT_MARGIN:
        return True
    if dx < -LEFT_MARGIN:
        return False
    return None


def above(a: Obj, b: Obj) -> bool | None:
    dy = b.y - a.y
    if dy > LEFT_MARGIN:
        return True
    if dy < -LEFT_MARGIN:
        return False
    return None


def region(o: Obj) -> str:
    """Coarse position name ('top left', 'center', 'bottom', ...)."""
    col = "left" if o.x < 0.36 else "right" if o.x > 0.64 else ""
    row = "top" if o.y < 0.36 else "bottom" if o.y > 0.64 else ""
    if row and col:
        return f"{row} {col}"
    return row or col or "center"


def referring_name(o: Obj, objects: tuple[Obj, ...]) -> str | None:
    """The shortest name that picks out ``o`` uniquely ('star', 'red star', 'large red star'), or None."""
    if sum(p.shape == o.shape for p in objects) == 1:
        return o.shape
    if sum(p.shape == o.shape and p.colour == o.colour for p in objects) == 1:
        return f"{o.colour} {o.shape}"
    if sum(p.shape == o.shape and p.colour == o.colour and p.size == o.size for p in objects) == 1:
        return f"{o.size} {o.colour} {o.shape}"
    return None
