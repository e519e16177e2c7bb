"""Frozen-style open-ended fast concept binding episodes on world shapes.

An N-way K-shot episode invents N nonsense words, binds each to one shape category, shows K
support images per word (one object of that shape, random colour, size, position and
background, each labelled "This is a <word>."), and asks "What is this?" about a query image of
one of the N shapes. The word cannot be known in advance — it exists only in this episode — so
the only route to the answer is binding it from the support images. The query's colour avoids
every colour used in the support when possible, so colour matching does not solve the episode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.datasets.world_scene import COLOUR_NAMES, SHAPES, SIZES, Background, Obj, Scene, sample_background, sample_rotation

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "bl", "dr", "gl", "kr", "pl", "sn", "tw", "zw")
VOWELS = ("a", "e", "i", "o", "u", "ee", "oo", "ai")
CODAS = ("", "", "x", "k", "p", "t", "sh", "ck", "m", "n", "z")

REAL_WORDS = frozenset(
    {"baby", "bacon", "banjo", "basin", "boot", "camel", "demon", "dino", "gala", "kimono", "lemon", "lotus",
     "mango", "melon", "motel", "navy", "pagoda", "panda", "pilot", "polo", "radio", "robot", "rodeo", "sofa",
     "solo", "tuna", "tuba", "tulip", "venom", "video", "visa", "zero", "sumo", "lady", "pony", "tidy", "rosy"}
    | set(SHAPES)
    | set(COLOUR_NAMES)
)


def nonsense_word(rng: np.random.Generator) -> str:
    """A pronounceable invented word of two syllables (e.g. 'blekix'), never a listed real word."""
    while True:
        parts = []
        for _ in range(2):
            parts.append(ONSETS[int(rng.integers(len(ONSETS)))] + VOWELS[int(rng.integers(len(VOWELS)))])
        word = "".join(parts) + CODAS[int(rng.integers(len(CODAS)))]
        if word not in REAL_WORDS and 4 <= len(word) <= 9:
            return word


@dataclass(frozen=True)
class Episode:
    """``support`` pairs a scene with its word; ``query`` is the scene asked about."""

    words: tuple[str, ...]
    shapes: tuple[str, ...]
    support: tuple[tuple[Scene, str], ...]
    query: Scene
    query_word: str


def _single_object_scene(rng: np.random.Generator, shape: str, colour: str, background: Background) -> Scene:
    size = "large" if rng.random() < 0.7 else "small"
    r = float(rng.uniform(*SIZES[size]))
    x, y = (float(rng.uniform(0.3, 0.7)) for _ in range(2))
    return Scene((Obj(shape, colour, size, x, y, r, sample_rotation(rng, shape)),), background)


def sample_episode(rng: np.random.Generator, ways: int, shots_per_way: int) -> Episode:
    if not 2 <= ways <= len(SHAPES):
        raise ValueError(f"ways must be between 2 and {len(SHAPES)} (one shape per word), got {ways}")
    shape_idx = rng.choice(len(SHAPES), size=ways, replace=False)
    shapes = tuple(SHAPES[int(i)] for i in shape_idx)
    words: list[str] = []
    while len(words) < ways:
        w = nonsense_word(rng)
        if w not in words:
            words.append(w)
    support: list[tuple[Scene, str]] = []
    used: set[str] = set()
    for shape, word in zip(shapes, words):
        for _ in range(shots_per_way):
            colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
            used.add(colour)
            support.append((_single_object_scene(rng, shape, colour, sample_background(rng)), word))
    order = rng.permutation(len(support))
    support = [support[int(i)] for i in order]
    target = int(rng.integers(ways))
    fresh = [c for c in COLOUR_NAMES if c not in used] or list(COLOUR_NAMES)
    colour = fresh[int(rng.integers(len(fresh)))]
    query = _single_object_scene(rng, shapes[target], colour, sample_background(rng))
    return Episode(tuple(words), shapes, tuple(support), query, words[target])
