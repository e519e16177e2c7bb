"""``world``: a procedural scene world with exact ground truth, generated from a seed.

Scenes of coloured shapes (and sometimes a sign with a painted word) on a textured background,
rendered at any size and any number of images. Captions and VQA answers are derived from the
scene graph, so they are exactly right; ``binding`` builds Frozen-style fast concept binding
episodes. Splits are disjoint seed streams: image ``i`` of split ``s`` is drawn from the seed
sequence ``(seed, stream(s), i)``, so ``train``, ``val`` and ``test`` never share a draw and
growing ``n_images`` only appends images.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import Field, model_validator

from tasks.base import Dataset, Sample
from tasks.datasets._registry import LoaderOptions, register_loader
from tasks.datasets.world_binding import sample_episode
from tasks.datasets.world_language import captions, questions
from tasks.datasets.world_render import render_scene
from tasks.datasets.world_scene import Scene, rng_for, sample_scene

SPLITS = ("train", "val", "test")
STREAMS = {"train": 0, "val": 1, "test": 2}
GENERATOR_VERSION = 1
"""Bumped whenever a change would alter any generated image or annotation (recorded in ``source``)."""

# purposes: separate sub-streams per image so that e.g. changing the caption code never moves a scene
_SCENE, _CAPTIONS, _QUESTIONS, _EPISODE = 0, 1, 2, 3


class WorldOptions(LoaderOptions):
    task: Literal["caption", "vqa", "binding"] = "caption"
    n_images: int = Field(200, ge=1, le=1_000_000, description="images (caption/vqa) or episodes (binding)")
    seed: int = Field(0, ge=0)
    image_size: int = Field(224, ge=64, le=1024)
    ways: int = Field(2, ge=2, le=7)
    shots_per_way: int = Field(1, ge=1, le=16)

    @model_validator(mode="after")
    def _binding_only(self) -> "WorldOptions":
        stray = {"ways", "shots_per_way"} & self.model_fields_set
        if stray and self.task != "binding":
            raise ValueError(f"options {sorted(stray)} only apply to task 'binding', not {self.task!r}")
        return self


def _loader(scene: Scene, size: int):
    return functools.partial(render_scene, scene, size)


def _ref(split: str, o: WorldOptions, index: int, suffix: str = "") -> str:
    return f"world:v{GENERATOR_VERSION}:{split}:seed{o.seed}:{index}{suffix}@{o.image_size}px"


def _caption_or_vqa(split: str, o: WorldOptions) -> list[Sample]:
    samples: list[Sample] = []
    stream = STREAMS[split]
    for i in range(o.n_images):
        scene = sample_scene(rng_for(o.seed, stream, i, _SCENE))
        ref = _ref(split, o, i)
        load = _loader(scene, o.image_size)
        meta = {"image_id": ref, "n_objects": len(scene.objects), "has_text": scene.sign is not None}
        if o.task == "caption":
            refs = captions(scene, rng_for(o.seed, stream, i, _CAPTIONS))
            samples.append(Sample(f"world/{split}/{i}", ref, load, references=refs, meta=meta))
            continue
        for k, q in enumerate(questions(scene, rng_for(o.seed, stream, i, _QUESTIONS))):
            samples.append(
                Sample(
                    f"world/{split}/{i}/q{k}",
                    ref,
                    load,
                    question=q.question,
                    answers=q.answers,
                    meta={**meta, "question_type": q.question_type, "answer_type": q.answer_type},
                )
            )
    return samples


def _binding(split: str, o: WorldOptions) -> list[Sample]:
    samples: list[Sample] = []
    stream = STREAMS[split]
    for i in range(o.n_images):
        ep = sample_episode(rng_for(o.seed, stream, i, _EPISODE), o.ways, o.shots_per_way)
        support = tuple(
            Sample(
                f"world-binding/{split}/{i}/s{j}",
                _ref(split, o, i, f"/s{j}"),
                _loader(scene, o.image_size),
                question="What is this?",
                answers=(word,),
                meta={
                    "image_id": _ref(split, o, i, f"/s{j}"),
                    "statement": f"This is a {word}.",
                    "shape": scene.objects[0].shape,
                },
            )
            for j, (scene, word) in enumerate(ep.support)
        )
        ref = _ref(split, o, i, "/query")
        samples.append(
            Sample(
                f"world-binding/{split}/{i}",
                ref,
                _loader(ep.query, o.image_size),
                question="What is this?",
                answers=(ep.query_word,),
                episode=support,
                meta={
                    "image_id": ref,
                    "words": ep.words,
                    "shapes": ep.shapes,
                    "ways": o.ways,
                    "shots_per_way": o.shots_per_way,
                    "query_shape": ep.query.objects[0].shape,
                },
            )
        )
    return samples


@register_loader(
    "world",
    options=WorldOptions,
    splits=SPLITS,
    description="procedural shapes world with exact captions, VQA and fast-binding episodes",
)
def load_world(split: str, options: WorldOptions) -> Dataset:
    build = _binding if options.task == "binding" else _caption_or_vqa
    detail = f", ways={options.ways}, shots_per_way={options.shots_per_way}" if options.task == "binding" else ""
    return Dataset(
        name=f"world/{options.task}",
        split=split,
        source=(
            f"procedural (tasks.datasets.world v{GENERATOR_VERSION}, seed={options.seed}, "
            f"n_images={options.n_images}, image_size={options.image_size}{detail})"
        ),
        samples=tuple(build(split, options)),
        license="Apache-2.0 (generated by mmbench)",
    )
