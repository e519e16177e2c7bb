"""The declarative table behind the ``hub_*`` loaders: hub id, splits and field mapping per dataset.

A field path is a column name, ``col.key`` for a key of a dict column, or ``col[].key`` for a
key of every dict in a list column (VQAv2's ``answers[].answer``). Schemas follow each dataset's
hub card at the time of writing; they cannot be checked offline, so every loader checks that the
mapped columns exist and names the available ones when they do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class HubSpec:
    name: str
    hub_id: str
    kinds: tuple[str, ...]
    """Task forms this dataset supports; the first is the default ``task``."""
    splits: Mapping[str, str]
    """mmbench split -> hub split name."""
    image: str = "image"
    id: str | None = None
    question: str | None = None
    answers: str | None = None
    captions: str | None = None
    choices: str | None = None
    answer_index: str | None = None
    meta: tuple[str, ...] = ()
    """Extra columns copied into ``Sample.meta`` (e.g. ScienceQA's ``hint``)."""
    require_image: bool = False
    """Drop rows without an image (ScienceQA mixes text-only questions in)."""
    answers_literal: bool = False
    """The answers column may be a string holding a Python list literal (parsed, never evaluated)."""
    revision: str | None = None
    data_files: Mapping[str, str] | None = None
    license: str = ""
    field_notes: str = ""


HUB_SPECS: tuple[HubSpec, ...] = (
    HubSpec(
        name="coco_karpathy",
        hub_id="nlphuji/mscoco_2014_5k_test_image_text_retrieval",
        kinds=("caption",),
        splits={"test": "test"},
        captions="caption",
        revision="refs/convert/parquet",
        data_files={"test": "TEST/test/*.parquet"},
        license="COCO annotations CC BY 4.0; images under Flickr licenses",
        field_notes="Karpathy 5k test; the repo is script-based, so its parquet export branch is read",
    ),
    HubSpec(
        name="flickr30k",
        hub_id="nlphuji/flickr_1k_test_image_text_retrieval",
        kinds=("caption",),
        splits={"test": "test"},
        captions="caption",
        revision="refs/convert/parquet",
        data_files={"test": "TEST/test/*.parquet"},
        license="Flickr30k: non-commercial research use; images under Flickr terms",
        field_notes="Karpathy 1k test; parquet export branch",
    ),
    HubSpec(
        name="nocaps",
        hub_id="lmms-lab/NoCaps",
        kinds=("caption",),
        splits={"val": "validation", "test": "test"},
        id="image_id",
        captions="annotations_captions",
        meta=("image_open_images_id",),
        license="nocaps annotations CC BY 2.0; Open Images images CC BY 2.0",
        field_notes="test split has no public captions",
    ),
    HubSpec(
        name="vqav2",
        hub_id="lmms-lab/VQAv2",
        kinds=("vqa",),
        splits={"val": "validation", "testdev": "testdev", "test": "test"},
        id="question_id",
        question="question",
        answers="answers[].answer",
        meta=("image_id", "question_type", "answer_type", "multiple_choice_answer"),
        license="VQA annotations CC BY 4.0; COCO images under Flickr licenses",
    ),
    HubSpec(
        name="okvqa",
        hub_id="lmms-lab/OK-VQA",
        kinds=("vqa",),
        splits={"val": "val2014"},
        id="question_id",
        question="question",
        answers="answers",
        meta=("question_type", "answer_type"),
        license="OK-VQA annotations CC BY 4.0 (per project site); COCO images under Flickr licenses",
    ),
    HubSpec(
        name="aokvqa",
        hub_id="HuggingFaceM4/A-OKVQA",
        kinds=("vqa", "multiple_choice"),
        splits={"train": "train", "val": "validation", "test": "test"},
        id="question_id",
        question="question",
        answers="direct_answers",
        answers_literal=True,
        choices="choices",
        answer_index="correct_choice_idx",
        meta=("difficult_direct_answer",),
        license="A-OKVQA annotations Apache-2.0; COCO images under Flickr licenses",
        field_notes="direct_answers is a string holding a Python list on the hub (parsed with ast.literal_eval); "
        "test split hides answers (empty answers / answer_index None)",
    ),
    HubSpec(
        name="textvqa",
        hub_id="lmms-lab/textvqa",
        kinds=("vqa",),
        splits={"train": "train", "val": "validation", "test": "test"},
        id="question_id",
        question="question",
        answers="answers",
        meta=("image_id",),
        license="TextVQA annotations CC BY 4.0; Open Images images CC BY 2.0",
    ),
    HubSpec(
        name="vizwiz",
        hub_id="lmms-lab/VizWiz-VQA",
        kinds=("vqa",),
        splits={"val": "val", "test": "test"},
        id="question_id",
        question="question",
        answers="answers",
        meta=("category",),
        license="VizWiz: CC BY 4.0",
    ),
    HubSpec(
        name="scienceqa",
        hub_id="derek-thomas/ScienceQA",
        kinds=("multiple_choice",),
        splits={"train": "train", "val": "validation", "test": "test"},
        question="question",
        choices="choices",
        answer_index="answer",
        meta=("hint", "subject", "grade", "topic", "skill", "lecture", "solution"),
        require_image=True,
        license="ScienceQA CC BY-NC-SA 4.0",
        field_notes="image subset only (rows whose image is null are dropped)",
    ),
)
