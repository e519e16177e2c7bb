"""Text-conversion paradigm (PICa, PromptCap) and the image -> text converters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from harness.interface import Request, Shot
from harness.models.converters import (
    CaptionerSpec,
    CaptionModelConverter,
    CompositeConverter,
    ConversionCache,
    ObjectsSpec,
    build_converter,
)
from harness.models.llm import GenerationSettings
from harness.models.packaged import ModelUnavailable
from harness.models.tools import (
    Classification,
    Detection,
    Detections,
    Face,
    Faces,
    LabelScore,
    TextLine,
    TextLines,
)
from harness.registry import get_paradigm
from paradigms.text_conversion.base import ensemble_shot_sets
from paradigms.text_conversion.prompts import Example, pica_prompt
from paradigms.text_conversion.promptcap import rank_facts
from tests.fakes import FakeLLM, ScriptedTools

GEN = GenerationSettings(16, ("\n",), True)


# ------------------------------------------------------------------ doubles
def street_outputs() -> dict[str, Any]:
    return {
        "object_detector": Detections(
            (Detection("person", 0.9, (0.4, 0.3, 0.6, 0.9)), Detection("dog", 0.8, (0.0, 0.4, 0.2, 0.6)),
             Detection("car", 0.3, (0.7, 0.7, 0.9, 0.9)))
        ),
        "image_classifier": Classification((LabelScore("golden retriever", 0.6), LabelScore("lakeside", 0.2))),
        "text_reader": TextLines((TextLine("STOP", 0.95, (0.7, 0.1, 0.8, 0.2)),)),
        "face_detector": Faces((Face((0.45, 0.3, 0.55, 0.4)),)),
    }


@dataclass
class Holder:
    """Stands in for Backbones: the attributes a paradigm reads."""

    llm: Any = None
    tools: Any = None
    text_embedder: Any = None


def make(name: str, holder: Holder, **options: Any) -> Any:
    cls = get_paradigm(f"text_conversion/{name}")
    return cls(holder, cls.Options(**options), GEN)


def blank(color: str = "white") -> Image.Image:
    return Image.new("RGB", (64, 48), color)


# ------------------------------------------------------------------ converters
def test_composite_context_text_and_cache() -> None:
    tools = ScriptedTools(street_outputs())
    specs = [ObjectsSpec(), *get_paradigm("text_conversion/pica").Options().converters[1:]]
    cache = ConversionCache()
    comp = CompositeConverter([build_converter(s, tools) for s in specs], cache)
    out = comp.convert("img1", blank())
    assert out.text == (
        "Objects: person (center), dog (left). Scene tags: golden retriever, lakeside. "
        "Text in image: 'STOP'. Faces: 1."
    )  # the car (0.3) is under the 0.5 default threshold
    assert out.tool_calls == 4
    again = comp.convert("img1", blank())
    assert again.text == out.text and again.tool_calls == 0 and len(tools.calls) == 4
    other = CompositeConverter([build_converter(ObjectsSpec(positions=False, min_score=0.2), tools)], cache)
    assert other.convert("img1", blank()).text == "Objects: person, dog, car."  # settings are in the key


def test_variants_share_a_conversion_cache_offered_by_the_backbones() -> None:
    tools = ScriptedTools(street_outputs())
    llm = FakeLLM({"": " dog"}, {"": -1.0})

    @dataclass
    class WithCache(Holder):
        conversion_cache: ConversionCache = field(default_factory=ConversionCache)

    holder = WithCache(llm, tools)
    first = make("pica", holder).answer(blank(), "", question="What?", image_id="same")
    second = make("pica", holder, n_ensemble=2).answer(blank(), "", question="Who?", image_id="same")
    assert first.tool_calls == 4 and second.tool_calls == 0 and len(tools.calls) == 4


def test_captioner_offline_gives_clear_error(tmp_path) -> None:
    conv = CaptionModelConverter(CaptionerSpec(model=str(tmp_path / "no-such-captioner")))
    with pytest.raises(ModelUnavailable, match="captioner"):
        conv.facts("x", blank())


@pytest.fixture(scope="module")
def tiny_captioner_dir(tmp_path_factory):
    """A tiny random BLIP captioner saved like a user's local model folder (loading path only)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    d = tmp_path_factory.mktemp("tiny_blip")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "cat", "dog", "please",
             "describe", "this", "image", "according", "to", "the", "given", "question", ":", "what", "is", "?"]
    (d / "vocab.txt").write_text("\n".join(words))
    proc = BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), BertTokenizer(str(d / "vocab.txt"), bos_token="[DEC]"))
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(words), bos_token_id=5, sep_token_id=3, pad_token_id=0, eos_token_id=3, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    BlipForConditionalGeneration(cfg).save_pretrained(d)
    proc.save_pretrained(d)
    return d


def test_captioner_loads_a_local_folder_and_strips_the_prompt(tiny_captioner_dir) -> None:
    from harness.models.converters import PROMPTCAP_CAPTION_PROMPT, strip_prompt

    plain = CaptionModelConverter(CaptionerSpec(model=str(tiny_captioner_dir), max_new_tokens=5))
    (fact,) = plain.facts("x", blank())
    assert fact.label == "Caption" and fact.text == plain.facts("x", blank())[0].text  # greedy: repeatable
    prompted = CaptionModelConverter(CaptionerSpec(model=str(tiny_captioner_dir), max_new_tokens=5), PROMPTCAP_CAPTION_PROMPT)
    assert prompted.question_aware() and not plain.question_aware()
    out = prompted.facts("x", blank(), "what is this?")
    assert all("describe" not in f.text for f in out)  # the echoed PromptCap prompt is removed
    assert strip_prompt("please describe this image : what is this ? a cat", "please describe this image: what is this?") == "a cat"
    assert strip_prompt("a cat", "") == "a cat"


def test_options_are_strict() -> None:
    opts = get_paradigm("text_conversion/pica").Options
    with pytest.raises(ValidationError):
        opts(n_ensembel=5)
    with pytest.raises(ValidationError):
        opts(converters=[{"kind": "objects", "min_scor": 0.2}])
    assert opts(converters=[{"kind": "ocr"}]).converters[0].kind == "ocr"


# ------------------------------------------------------------------ PICa prompt
PICA_EXPECTED = (
    "Please answer the question according to the above context.\n"
    "===\n"
    "Context: A dog on grass.\n"
    "===\n"
    "Q: What animal is this?\n"
    "A: dog\n"
    "\n"
    "===\n"
    "Context: A red bus.\n"
    "===\n"
    "Q: What color is the bus?\n"
    "A:"
)


def test_pica_prompt_layout_byte_for_byte() -> None:
    ex = [Example("A dog on grass.", "What animal is this?", "dog")]
    assert pica_prompt(ex, "A red bus.", "What color is the bus?") == PICA_EXPECTED


def test_pica_paradigm_builds_the_paper_prompt() -> None:
    llm = FakeLLM({"": " red"}, {"": -1.0})
    tools = ScriptedTools(street_outputs())
    par = make("pica", Holder(llm, tools), converters=[{"kind": "ocr"}])
    shot = Shot("s0", "shot-img", blank(), "Question: What does it say? Short answer:", "stop")
    ans = par.answer(blank(), "Question: What sign? Short answer:", [shot], question="What sign is it?", image_id="q")
    expected = pica_prompt(
        [Example("Text in image: 'STOP'.", shot.prompt, "stop")], "Text in image: 'STOP'.", "What sign is it?"
    )
    assert ans.error is None and ans.text == "red"
    assert ans.trace["prompts"] == [expected]
    chat = make("pica", Holder(llm, tools), converters=[{"kind": "ocr"}], use_chat_template=True)
    ans_chat = chat.answer(blank(), "", [shot], question="What sign is it?", image_id="q")
    assert ans_chat.trace["prompts"] == [f"<user>\n{expected}\n<assistant>\n"]  # PICa text identical inside the chat


# ------------------------------------------------------------------ ensemble
def test_ensemble_picks_highest_logprob_answer() -> None:
    shots = tuple(Shot(f"s{i}", f"i{i}", blank(), f"q{i}", f"a{i}") for i in range(3))
    # permute mode: prompt 0 keeps the order s0 s1 s2; the others are shuffled by a seeded RNG
    sets = ensemble_shot_sets(shots, 3, "permute", "sample")
    orders = [tuple(s.sample_id for s in ss) for ss in sets]
    assert orders[0] == ("s0", "s1", "s2") and len(set(orders)) == 3  # prompt 0 keeps the given order
    prompts = [pica_prompt([Example("Faces: 1.", s.prompt, s.answer) for s in ss], "Faces: 1.", "What?") for ss in sets]
    llm = FakeLLM(dict(zip(prompts, [" cat", " dog", " "])), {"| cat": -3.0, "| dog": -0.5})
    par = make("pica", Holder(llm, ScriptedTools(street_outputs())), n_ensemble=3, ensemble_mode="permute",
               converters=[{"kind": "faces"}])
    ans = par.answer_batch([Request("sample", "q", blank(), "", shots=shots, question="What?")])[0]
    assert ans.trace["generations"] == ["cat", "dog", ""]
    assert ans.text == "dog" and ans.trace["chosen"] == 1  # -0.5 beats -3.0; the empty answer never wins
    assert ans.trace["logprobs"] == [-3.0, -0.5, None]
    assert len(llm.calls) == 1


def test_split_mode_gives_disjoint_chunks_like_pica() -> None:
    shots = tuple(Shot(f"s{i}", f"i{i}", None, "", "") for i in range(6))
    sets = ensemble_shot_sets(shots, 3, "split", "x")
    assert [[s.sample_id for s in ss] for ss in sets] == [["s0", "s1"], ["s2", "s3"], ["s4", "s5"]]


@pytest.mark.slow
def test_ensemble_choice_agrees_with_the_real_model_logprobs(tiny_llm) -> None:
    shots = tuple(Shot(f"s{i}", f"i{i}", blank(), f"What is {i}?", f"thing{i}") for i in range(3))
    par = make("pica", Holder(tiny_llm, ScriptedTools(street_outputs())), n_ensemble=3, ensemble_mode="permute")
    ans = par.answer_batch([Request("smp", "q", blank(), "", shots=shots, question="What is it?")])[0]
    gens = ans.trace["generations"]
    # score each member's answer afresh with the raw generations' text
    raw = tiny_llm.generate(ans.trace["prompts"], GenerationSettings(5, ("\n",), True))
    assert [g.text.strip() for g in raw] == gens
    lp = [tiny_llm.continuation_logprobs([p], [g.text])[0] if g.text.strip() else float("-inf")
          for p, g in zip(ans.trace["prompts"], raw)]
    best = max(range(3), key=lambda k: (lp[k], -k))
    assert ans.trace["chosen"] == best and ans.text == gens[best]


# ------------------------------------------------------------------ MC / binding / failures
def test_multiple_choice_by_logprob_over_options() -> None:
    llm = FakeLLM({"": "unused"}, {"| soup": -2.0, "| coffee": -1.0, "| water": -4.0})
    par = make("pica", Holder(llm, ScriptedTools(street_outputs())))
    req = Request("mc", "q", blank(), "", kind="multiple_choice", question="What is in the cup?",
                  choices=("soup", "coffee", "water"))
    ans = par.answer_batch([req])[0]
    assert ans.text == "coffee" and ans.trace["logprobs"] == [-2.0, -1.0, -4.0]
    assert "Q: What is in the cup? Options: soup, coffee, water.\nA:" in ans.trace["prompts"][0]
    assert len(llm.calls) == 0  # chosen by scoring, not by parsing free text


def test_binding_scores_the_invented_words_of_the_shots() -> None:
    llm = FakeLLM({"": "x"}, {"| dax": -5.0, "| blicket": -1.5})
    par = make("pica", Holder(llm, ScriptedTools(street_outputs())))
    shots = (Shot("a", "ia", blank(), "What is this?", "dax"), Shot("b", "ib", blank(), "What is this?", "blicket"))
    ans = par.answer_batch([Request("q", "iq", blank(), "What is this?", shots=shots, kind="binding")])[0]
    assert ans.text == "blicket" and ans.trace["candidates"] == ["dax", "blicket"]


def test_failing_tool_or_missing_image_fails_only_that_sample() -> None:
    llm = FakeLLM({"": " dog"}, {"": -1.0})
    tools = ScriptedTools(street_outputs(), fail_on="broken")
    par = make("pica", Holder(llm, tools))
    reqs = [
        Request("ok", "fine", blank(), "", question="What?"),
        Request("bad", "broken", blank(), "", question="What?"),
        Request("none", "gone", None, "", question="What?"),
        Request("badshot", "fine", blank(), "", shots=(Shot("s", "broken", blank(), "q", "a"),), question="What?"),
    ]
    out = par.answer_batch(reqs)
    assert [a.error is None for a in out] == [True, False, False, False]
    assert out[0].text == "dog"
    assert "crashed" in out[1].error and "missing" in out[2].error and "crashed" in out[3].error


def test_overlong_prompt_fails_cleanly() -> None:
    llm = FakeLLM({"": " dog"}, {"": -1.0})
    llm.model.config.max_position_embeddings = 30
    shots = tuple(Shot(f"s{i}", f"i{i}", blank(), "a long question " * 5, "a") for i in range(5))
    ans = make("pica", Holder(llm, ScriptedTools(street_outputs()))).answer(blank(), "", shots, question="What?")
    assert ans.error is not None and "too long" in ans.error


# ------------------------------------------------------------------ PromptCap (real MiniLM)
@pytest.fixture(scope="module")
def embedder():
    from harness.models.text_embedder import TextEmbedder

    return TextEmbedder()


def test_promptcap_puts_the_question_relevant_fact_first(embedder) -> None:
    tools = ScriptedTools(street_outputs())
    llm = FakeLLM({"": " stop"}, {"": -1.0})
    par = make("promptcap", Holder(llm, tools, embedder), top_n_facts=3)
    ans = par.answer(blank(), "", question="What does the sign say?", image_id="street")
    assert ans.trace["context"].startswith("Text in image: 'STOP'.")
    assert len(ans.trace["query"]["fact_scores"]) == 6  # every fact is scored, top 3 are kept
    facts = ans.trace["query"]["fact_scores"]
    assert [s for _, s in facts] == sorted((s for _, s in facts), reverse=True)
    from harness.models.converters import Fact

    ans = par.answer(blank(), "", question="What breed is the dog?", image_id="street")
    assert ans.trace["context"].startswith("Scene tags: golden retriever.")
    ranked = rank_facts(embedder, "How many cars are there?", (Fact("Objects", "person"), Fact("Objects", "car"),
                                                                  Fact("Scene tags", "golden retriever")))
    assert ranked[0][0].text == "car"


# ------------------------------------------------------------------ batching, real model + tools
@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    skdata = pytest.importorskip("skimage.data")
    return {n: Image.fromarray(getattr(skdata, n)()).convert("RGB") for n in ("astronaut", "coffee", "chelsea")}


@pytest.mark.slow
def test_batch_equals_one_by_one_with_smollm2(smollm2, photos) -> None:
    from harness.models.tools import ToolBox

    # OCR is left out only to keep this test fast (it is the slowest tool, ~1.7 s per photo on CPU)
    par = make("pica", Holder(smollm2, ToolBox()), converters=[{"kind": "objects"}, {"kind": "tags"}, {"kind": "faces"}])
    shot = Shot("demo", "coffee", photos["coffee"], "What is this?", "coffee")
    reqs = [
        Request("a", "astronaut", photos["astronaut"], "", shots=(shot,), question="Who is this?", max_new_tokens=5),
        Request("c", "chelsea", photos["chelsea"], "", shots=(shot,), question="What animal is this?", max_new_tokens=5),
        Request("mc", "coffee", photos["coffee"], "", kind="multiple_choice", question="What drink is this?",
                choices=("coffee", "milk", "juice")),
    ]
    batch = par.answer_batch(reqs)
    single = [par.answer_batch([r])[0] for r in reqs]
    assert [a.error for a in batch] == [None] * 3
    assert [a.text for a in batch] == [a.text for a in single]
    assert batch[2].trace["logprobs"] == pytest.approx(single[2].trace["logprobs"], abs=1e-3)
    assert "cat" in batch[1].trace["context"].lower()  # real tools saw the cat
    assert batch[1].text.strip()  # one demonstration is enough for SmolLM2 to answer
    assert batch[0].llm_tokens_in > 0 and batch[0].trace["prompts"][0].startswith("Please answer the question")
    json.dumps([a.to_dict() for a in batch])  # traces are JSON-serialisable


def test_caption_prompt_uses_context_caption_pairs() -> None:
    llm = FakeLLM({"": " A dog and a person on a street."}, {"": -1.0})
    par = make("pica", Holder(llm, ScriptedTools(street_outputs())), converters=[{"kind": "faces"}])
    shot = Shot("s", "i", blank(), "Write a short caption for this image.", "A man smiling.")
    ans = par.answer(blank(), "Write a short caption for this image.", [shot], kind="caption", max_new_tokens=20)
    assert ans.text == "A dog and a person on a street."
    assert ans.trace["prompts"][0] == (
        "Please write a short caption for the image according to the above context.\n===\n"
        "Context: Faces: 1.\n===\nCaption: A man smiling.\n\n===\n"
        "Context: Faces: 1.\n===\nCaption:"
    )
