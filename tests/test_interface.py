"""The paradigm interface: ``answer()`` identifies images by content as the runner does, so the
per-image caches of a paradigm (tool outputs, conversions, features) never hand one image's
results to another."""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar, Sequence

import numpy as np
import pytest
from PIL import Image

from harness.config import Strict
from harness.interface import Answer, Paradigm, Request, Shot, image_id_of
from harness.models.llm import GenerationSettings
from harness.registry import get_paradigm

GEN = GenerationSettings(8, ("\n",), True)
QUESTION = "Question: What is in the picture? Short answer:"


def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


class _Recorder(Paradigm):
    """Records the requests it is given (not registered: the interface, not a method, is under test)."""

    family = "text_conversion"
    variant = "recorder"
    uses: ClassVar[tuple[str, ...]] = ()

    class Options(Strict):
        pass

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(), self.Options(), GEN)
        self.requests: list[Request] = []

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        self.requests += requests
        return [Answer(text=r.image_id) for r in requests]


def test_image_id_of_is_a_content_id() -> None:
    white = Image.new("RGB", (8, 8), "white")
    assert image_id_of(white) == image_id_of(Image.new("RGB", (8, 8), (255, 255, 255)))
    assert image_id_of(white) != image_id_of(Image.new("RGB", (8, 8), "black"))
    assert image_id_of(white) != image_id_of(Image.new("RGB", (8, 4), "white"))  # size is part of it
    assert image_id_of(white) != image_id_of(white.convert("L"))  # mode too
    one_pixel = np.full((8, 8, 3), 255, np.uint8)
    one_pixel[3, 5] = (254, 255, 255)
    assert image_id_of(white) != image_id_of(Image.fromarray(one_pixel))


def test_answer_passes_the_content_id_and_keeps_an_explicit_one() -> None:
    rec = _Recorder()
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    assert rec.answer(white, "p").text == image_id_of(white)
    assert rec.answer(black, "p").text == image_id_of(black)
    assert rec.answer(white.copy(), "p").text == image_id_of(white)  # same pixels, another object: same id
    assert rec.answer(white, "p", image_id="mine").text == "mine"
    assert rec.answer(None, "p").text  # no image: still an id, never one of an image's


def test_a_shot_without_an_id_gets_its_images_content_id() -> None:
    img = Image.new("RGB", (8, 8), "red")
    assert Shot("s", "", img, "p", "a").image_id == image_id_of(img)
    assert Shot("s", "given", img, "p", "a").image_id == "given"
    assert Shot("s", "", None, "p", "a").image_id == ""  # nothing to identify
    rec = _Recorder()
    rec.answer(Image.new("RGB", (8, 8), "white"), "p", [Shot("s", "", img, "p", "a")])
    assert rec.requests[-1].shots[0].image_id == image_id_of(img)


@pytest.fixture(scope="module")
def packaged_tools():
    from harness.models.tools import ToolBox

    return ToolBox()


def test_two_answer_calls_on_different_images_convert_each_image(tiny_llm, packaged_tools) -> None:
    """PICa through ``answer()`` with the packaged tools: each image is converted (4 tool calls) and
    gets its own context; the same pixels again come from the cache (0 calls, same context)."""
    cls = get_paradigm("text_conversion/pica")
    pica = cls(SimpleNamespace(llm=tiny_llm, tools=packaged_tools), cls.Options(), GEN)
    coffee, rocket = _photo("coffee"), _photo("rocket")
    first = pica.answer(coffee, QUESTION, question="What is in the picture?")
    second = pica.answer(rocket, QUESTION, question="What is in the picture?")
    assert first.error is None and second.error is None
    assert (first.tool_calls, second.tool_calls) == (4, 4)
    assert first.trace["context"] != second.trace["context"]
    assert "missile" in second.trace["context"] and "cup" in first.trace["context"]
    again = pica.answer(_photo("coffee"), QUESTION, question="What is in the picture?")
    assert again.tool_calls == 0 and again.trace["context"] == first.trace["context"]


def test_shots_built_without_ids_are_converted_by_their_own_content(tiny_llm, packaged_tools) -> None:
    cls = get_paradigm("text_conversion/pica")
    pica = cls(SimpleNamespace(llm=tiny_llm, tools=packaged_tools), cls.Options(), GEN)
    query = _photo("astronaut")
    demo = {name: Shot("demo", "", _photo(name), QUESTION, name, question="What is in the picture?")
            for name in ("coffee", "rocket")}
    with_coffee = pica.answer(query, QUESTION, [demo["coffee"]], question="What is in the picture?")
    with_rocket = pica.answer(query, QUESTION, [demo["rocket"]], question="What is in the picture?")
    coffee_ctx, rocket_ctx = with_coffee.trace["shots"][0]["context"], with_rocket.trace["shots"][0]["context"]
    assert coffee_ctx != rocket_ctx and "missile" in rocket_ctx
