"""Captions and VQA questions derived from a world scene graph.

Captions imitate five annotators: each picks a different template (inventory, count, spatial
relation, position, text) and its own wording. Questions cover colour, shape, counting,
existence, left/right relations and reading the sign, and are only asked when the scene gives
one unambiguous answer. Ten answers per question are mostly identical, with the occasional
equivalent variant ("2" / "two", "circle" / "a circle") a careful VQA normaliser must accept.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from tasks.datasets.world_scene import (
    COLOUR_NAMES,
    NUMBER_WORDS,
    PLURAL,
    SHAPES,
    Obj,
    Scene,
    above,
    left_of,
    referring_name,
    region,
)

ANSWER_TYPES = {
    "color": "other",
    "shape": "other",
    "count": "number",
    "exists": "yes/no",
    "relation": "yes/no",
    "spatial": "other",
    "reading": "other",
}


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]
    question_type: str

    @property
    def answer_type(self) -> str:
        return ANSWER_TYPES[self.question_type]


def _pick(rng: np.random.Generator, items: tuple[str, ...] | list[str]) -> str:
    return items[int(rng.integers(len(items)))]


def a_(phrase: str) -> str:
    """'a' or 'an' before ``phrase``."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def _count_phrase(n: int, colour: str, shape: str) -> str:
    if n == 1:
        return a_(f"{colour} {shape}")
    word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    return f"{word} {colour} {PLURAL[shape]}"


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _inventory_parts(scene: Scene) -> list[str]:
    groups = Counter((o.colour, o.shape) for o in scene.objects)
    return [_count_phrase(n, c, s) for (c, s), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))]


def _inventory(scene: Scene) -> str:
    return _join(_inventory_parts(scene))


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _clear_pair(scene: Scene, rng: np.random.Generator) -> tuple[Obj, Obj, str] | None:
    """Two uniquely nameable objects and a relation word that clearly holds between them."""
    objs = list(scene.objects)
    order = rng.permutation(len(objs))
    for i in order:
        for j in order:
            if i == j:
                continue
            a, b = objs[i], objs[j]
            if referring_name(a, scene.objects) is None or referring_name(b, scene.objects) is None:
                continue
            if left_of(a, b):
                return a, b, _pick(rng, ("to the left of", "left of", "on the left side of"))
            if above(a, b):
                return a, b, _pick(rng, ("above", "over", "higher up than"))
    return None


def captions(scene: Scene, rng: np.random.Generator) -> tuple[str, ...]:
    """Five different captions of ``scene`` (distinct strings, fixed by ``rng``)."""
    objs = scene.objects
    n = len(objs)
    bg = scene.background.tone
    noun = _pick(rng, ("shape", "object", "figure"))
    nouns = noun + "s"
    backdrop = _pick(rng, ("background", "backdrop"))
    texture = _pick(rng, ("noisy", "mottled", "speckled", "textured", "blotchy"))
    inventory = _inventory(scene)
    sign_part = [f'a sign that says "{scene.sign.word}"'] if scene.sign else []
    count = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)

    candidates: list[str] = []
    candidates.append(_cap(f"{_join(_inventory_parts(scene) + sign_part)} on a {texture} {bg} {backdrop}."))
    if n == 1:
        candidates.append(_cap(f"a single {objs[0].size} {objs[0].name} on a {texture} {backdrop}."))
    else:
        candidates.append(_cap(f"{count} {nouns} on a {bg} {backdrop}: {inventory}."))
    pair = _clear_pair(scene, rng)
    if pair is not None:
        first, second, rel = pair
        candidates.append(_cap(f"{a_(first.name)} is {rel} {a_(second.name)}."))
    big = max(objs, key=lambda o: o.r)
    others = [o for o in objs if o is not big]
    where = region(big)
    place = "in the center" if where == "center" else f"on the {where}" if where in ("left", "right") else f"at the {where}"
    if others:
        candidates.append(_cap(f"{a_(big.size + ' ' + big.name)} {place}, with {_inventory(Scene(tuple(others), scene.background))} nearby."))
    else:
        candidates.append(_cap(f"{a_(big.name)} sits {place} of the image."))
    if scene.sign is not None:
        candidates.append(_cap(f'a sign reading "{scene.sign.word}" next to {inventory}.'))
        candidates.append(_cap(f"the word {scene.sign.word} is written on a plate among some colored {nouns}."))
    colours = sorted({o.colour for o in objs})
    shapes = sorted({o.shape for o in objs})
    if n == 1:
        candidates.append(_cap(f"a lone {objs[0].colour} {noun} on a {texture} surface."))
        candidates.append(_cap(f"a simple geometric {noun}: {a_(objs[0].shape)}."))
    else:
        candidates.append(_cap(f"some {_join(colours)} {nouns} scattered over a {texture} surface."))
        candidates.append(_cap(f"simple geometric {nouns} including {_join([a_(s) for s in shapes])}."))
    candidates.append(_cap(f"an image with {count} colored {noun if n == 1 else nouns} on a {bg} {backdrop}."))

    # keep the most informative first (inventory, count, relation, position), then fill from the rest
    unique = list(dict.fromkeys(candidates))
    head, tail = unique[:4], unique[4:]
    tail = [tail[i] for i in rng.permutation(len(tail))]
    chosen = (head + tail)[:5]
    return tuple(chosen)


# --- questions -----------------------------------------------------------------------------------


def _ten(answer: str, rng: np.random.Generator, variants: tuple[str, ...] = (), p_variant: float = 0.25) -> tuple[str, ...]:
    """Ten annotator answers: ``answer``, with at most two equivalent ``variants`` sprinkled in."""
    answers = [answer] * 10
    if variants and rng.random() < p_variant:
        k = 1 + int(rng.random() < 0.3)
        for idx in rng.choice(10, size=k, replace=False):
            answers[int(idx)] = _pick(rng, variants)
    return tuple(answers)


def _number_answers(n: int, rng: np.random.Generator) -> tuple[str, ...]:
    variants = (NUMBER_WORDS[n],) if n < len(NUMBER_WORDS) else ()
    if n == 0:
        variants = ("zero", "none")
    return _ten(str(n), rng, variants, p_variant=0.4)


def _unsafe_colours(scene: Scene) -> set[str]:
    """Colours a person could also see in the sign's light plate, so never asked about."""
    return {"white"} if scene.sign is not None else set()


def _colour_q(scene: Scene, rng: np.random.Generator) -> Question | None:
    unique = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    if not unique:
        return None
    o = unique[int(rng.integers(len(unique)))]
    text = _pick(rng, (f"What color is the {o.shape}?", f"What is the color of the {o.shape}?"))
    return Question(text, _ten(o.colour, rng), "color")


def _shape_q(scene: Scene, rng: np.random.Generator) -> Question | None:
    unique = [
        o
        for o in scene.objects
        if sum(p.colour == o.colour for p in scene.objects) == 1 and o.colour not in _unsafe_colours(scene)
    ]
    if not unique:
        return None
    o = unique[int(rng.integers(len(unique)))]
    text = _pick(rng, (f"What shape is the {o.colour} object?", f"What is the shape of the {o.colour} object?"))
    return Question(text, _ten(o.shape, rng, (f"a {o.shape}",)), "shape")


def _count_q(scene: Scene, rng: np.random.Generator) -> Question:
    """Pick the target count first (0..3 or the total) so answers are spread, not mostly '1'."""
    objs = scene.objects
    options: dict[int, list[str]] = {}

    def add(n: int, text: str) -> None:
        options.setdefault(n, []).append(text)

    add(len(objs), _pick(rng, ("How many shapes are there?", "How many shapes are in the picture?")))
    for c in COLOUR_NAMES:
        if c in _unsafe_colours(scene):
            continue
        add(sum(o.colour == c for o in objs), f"How many {c} shapes are there?")
    for s in SHAPES:
        add(sum(o.shape == s for o in objs), f"How many {PLURAL[s]} are there?")
    wanted = int(rng.integers(0, 5))
    best = min(options, key=lambda n: (abs(n - wanted), n))
    texts = options[best]
    return Question(texts[int(rng.integers(len(texts)))], _number_answers(best, rng), "count")


def _exists_q(scene: Scene, rng: np.random.Generator) -> Question:
    present = {(o.colour, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        colour, shape = sorted(present)[int(rng.integers(len(present)))]
        answer = "yes"
    else:
        absent = [
            (c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present and c not in _unsafe_colours(scene)
        ]
        colour, shape = absent[int(rng.integers(len(absent)))]
        answer = "no"
    return Question(f"Is there {a_(colour + ' ' + shape)}?", _ten(answer, rng), "exists")


def _relation_q(scene: Scene, rng: np.random.Generator) -> Question | None:
    objs = list(scene.objects)
    pairs = []
    for a in objs:
        for b in objs:
            if a is b:
                continue
            na, nb = referring_name(a, scene.objects), referring_name(b, scene.objects)
            rel = left_of(a, b)
            if na and nb and rel is not None:
                pairs.append((na, nb, rel))
    if not pairs:
        return None
    # balance yes/no: choose the wanted answer, then a pair giving it
    want = bool(rng.random() < 0.5)
    matching = [p for p in pairs if p[2] == want] or pairs
    na, nb, rel = matching[int(rng.integers(len(matching)))]
    return Question(f"Is the {na} to the left of the {nb}?", _ten("yes" if rel else "no", rng), "relation")


def _spatial_q(scene: Scene, rng: np.random.Generator) -> Question | None:
    """'What shape is left of the X?' when exactly one object is clearly left of X and none is borderline."""
    objs = list(scene.objects)
    candidates = []
    for x in objs:
        name = referring_name(x, scene.objects)
        if name is None:
            continue
        rels = [(o, left_of(o, x)) for o in objs if o is not x]
        if any(r is None for _, r in rels):
            continue
        lefts = [o for o, r in rels if r]
        if len(lefts) == 1:
            candidates.append((name, lefts[0]))
    if not candidates:
        return None
    name, target = candidates[int(rng.integers(len(candidates)))]
    text = _pick(rng, (f"What shape is to the left of the {name}?", f"What shape is left of the {name}?"))
    return Question(text, _ten(target.shape, rng, (f"a {target.shape}",)), "spatial")


def _reading_q(scene: Scene, rng: np.random.Generator) -> Question | None:
    if scene.sign is None:
        return None
    text = _pick(rng, ("What does the sign say?", "What word is written on the sign?"))
    word = scene.sign.word
    return Question(text, _ten(word, rng, (word.capitalize(), f"{word}."), p_variant=0.3), "reading")


def questions(scene: Scene, rng: np.random.Generator) -> tuple[Question, ...]:
    """Up to six unambiguous questions about ``scene``, at most one per type."""
    found = [
        _colour_q(scene, rng),
        _shape_q(scene, rng),
        _count_q(scene, rng),
        _exists_q(scene, rng) if rng.random() < 0.5 else (_relation_q(scene, rng) or _exists_q(scene, rng)),
        _spatial_q(scene, rng),
        _reading_q(scene, rng),
    ]
    return tuple(q for q in found if q is not None)
