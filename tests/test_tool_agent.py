"""Tool agents: registry validation, both prompt formats, the loop's budgets, safety and batching.

Most tests script the LLM (a double that returns given continuations, cut at the stop strings as the
real one does) and give the agent small deterministic tools in a real ToolBox, so each trajectory is
exact. One test runs the packaged SmolLM2 with the packaged tools on real photographs.
"""

from __future__ import annotations

import builtins
import json
import re
from types import SimpleNamespace
from typing import Sequence

import pytest
from PIL import Image

from harness.agent_tools import AgentToolsOptions, ImageQueryInput, ToolInputError, build_registry, image_path
from harness.interface import Request, Shot
from harness.models.llm import GenerationSettings
from harness.models.tools import ToolBox
from paradigms.tool_agent import MMReact, VisualChatGPT
from tests.fakes import FakeLLM, FakeScorer, FakeTool


# ------------------------------------------------------------------------------------ doubles
def _colour(image: Image.Image) -> str:
    return "red" if image.getpixel((0, 0))[0] > 128 else "blue"


def make_backbones(llm, ocr_raises: bool = False):  # noqa: ANN001
    def ocr(image: Image.Image) -> str:
        if ocr_raises:
            raise RuntimeError("ocr model exploded")
        return '"STOP" (0.99, centre)'

    tools = [
        FakeTool("object_detector", lambda im: f"cat (0.91, centre); {_colour(im)} ball (0.55, left)"),
        FakeTool("image_classifier", lambda im: "tabby cat (0.80)"),
        FakeTool("text_reader", ocr),
        FakeTool("face_detector", lambda im: "no faces found"),
    ]
    return SimpleNamespace(llm=llm, tools=ToolBox(tools), scorer=FakeScorer())


def img(colour: str = "red") -> Image.Image:
    return Image.new("RGB", (32, 24), colour)


def req(i: int = 0, colour: str = "red", **kw) -> Request:  # noqa: ANN003
    base = dict(
        sample_id=f"s{i}",
        image_id=f"img{i}",
        image=img(colour),
        prompt="Question: what animal is this? Short answer:",
        question="what animal is this?",
        max_new_tokens=8,
    )
    base.update(kw)
    return Request(**base)


def agent(cls, llm, ocr_raises: bool = False, **opts):  # noqa: ANN001, ANN003
    return cls(make_backbones(llm, ocr_raises), cls.Options(**opts), GenerationSettings())


P0 = image_path("img0")


# ------------------------------------------------------------------------------------ registry
def test_registry_lists_tools_and_checks_argument_types():
    reg = build_registry(make_backbones(None))
    assert [t.name for t in reg] == ["Detect Objects", "Classify Image", "Read Text", "Detect Faces", "Check Image Shows"]
    tool, args = reg.validate("detect objects", {"image": P0})  # names are case-insensitive
    assert tool.name == "Detect Objects" and args.image == P0
    with pytest.raises(ToolInputError, match="unknown tool"):
        reg.validate("Segment Anything", {"image": P0})
    with pytest.raises(ToolInputError, match="bad input for Detect Objects"):
        reg.validate("Detect Objects", {"image": P0, "query": "dog"})  # takes no query
    with pytest.raises(ToolInputError, match="bad input"):
        reg.validate("Detect Objects", {"image": "/etc/passwd"})
    with pytest.raises(ToolInputError, match="query"):
        reg.validate("Check Image Shows", {"image": P0})
    only = build_registry(make_backbones(None), AgentToolsOptions(tools=("Read Text",)))
    assert [t.name for t in only] == ["Read Text"]
    with pytest.raises(ValueError, match="unknown agent tools"):
        build_registry(make_backbones(None), AgentToolsOptions(tools=("Paint",)))


def test_scorer_tool_says_yes_or_no_with_score_and_scorer_name():
    reg = build_registry(make_backbones(None))
    ref = {P0: SimpleNamespace(path=P0, image_id="img0", image=img())}
    tool, args = reg.validate("Check Image Shows", {"image": P0, "query": "a cat"})
    assert isinstance(args, ImageQueryInput)
    out = reg.run(tool, args, ref)
    assert out.startswith("yes") and "0.800" in out and "fake-scorer" in out
    _, args = reg.validate("Check Image Shows", {"image": P0, "query": "a truck"})
    assert reg.run(tool, args, ref).startswith("no")


# ------------------------------------------------------------------------------- trajectories
def user_text(prompt: str) -> str:
    """The rendered agent prompt inside the scripted chat wrapping (one user turn, as LangChain sends it)."""
    return prompt.split("<user>\n", 1)[1].rsplit("\n<assistant>\n", 1)[0]


def test_react_multi_step_trajectory():
    llm = FakeLLM(
        [
            f" Yes\nAction: Detect Objects\nAction Input: {P0}\nObservation: invented!",
            f"Thought: Do I need to use a tool? Yes\nAction: Check Image Shows\nAction Input: {P0}, a cat",
            " No\nAI: a cat\nHuman: more",
        ]
    )
    ans = agent(VisualChatGPT, llm).answer_batch([req()])[0]
    assert ans.error is None and ans.text == "a cat"
    t = ans.trace
    assert [s["kind"] for s in t["transcript"]] == ["action", "action", "final"]
    assert t["transcript"][0]["observation"].startswith("cat (0.91, centre); red ball")
    assert t["transcript"][1]["observation"].startswith("yes")
    assert t["tool_calls"] == 2 and ans.tool_calls == 2 and t["parse_errors"] == 0
    assert t["tools_used"] == ["Check Image Shows", "Detect Objects"] and not t["budget_exhausted"]
    assert (ans.parse_errors, ans.tool_failures, ans.budget_exhausted) == (0, 0, False)
    first, second = user_text(llm.calls[0][0][0]), user_text(llm.calls[1][0][0])
    assert "> Detect Objects: useful when" in first
    # the upload turn (no captioner configured: the file name only) and the AI's "Received."
    assert f"Human: provide a figure named {P0}. This information helps you" in first
    assert 'say "Received".\nAI: Received.\n\nNew input: Question: what animal is this?' in first
    assert first.endswith("Thought: Do I need to use a tool?  Let's think step by step.\n")
    # the model's invented observation was cut by the stop string; the real one follows the action,
    # and the scratchpad sits before "Let's think step by step." as in Visual ChatGPT's suffix
    assert "invented!" not in second
    assert second.endswith(
        f"Thought: Do I need to use a tool? Yes\nAction: Detect Objects\nAction Input: {P0}\n"
        "Observation: cat (0.91, centre); red ball (0.55, left)\nThought: Let's think step by step.\n"
    )
    assert llm.calls[0][1].stop == ("\nObservation:",)
    assert ans.llm_tokens_out == sum(len(s["generated"].split()) for s in t["transcript"])
    json.dumps(ans.trace)


def test_mm_react_watchword_trajectory():
    llm = FakeLLM(
        [
            f"AI: This is an image.\nAI: Assistant, what objects do you see in this image? {P0}\nAssistant: made up",
            f" I should check what it is.\nAI: Assistant, does this image show a cat? {P0}",
            " The objects include a cat.\nAI: a cat",
        ]
    )
    ans = agent(MMReact, llm, image_understanding=False).answer_batch([req()])[0]
    assert ans.text == "a cat" and ans.trace["tool_calls"] == 2
    steps = ans.trace["transcript"]
    assert steps[0]["tool"] == "Detect Objects" and steps[1]["tool"] == "Check Image Shows"
    assert steps[1]["observation"].startswith("yes") and "'a cat'" in steps[1]["observation"]
    last_prompt = user_text(llm.calls[2][0][0])
    assert "made up" not in last_prompt
    # multi-line AI turns: the reasoning lines stay in the scratchpad
    assert f"AI: This is an image.\nAI: Assistant, what objects do you see in this image? {P0}\nAssistant: cat (0.91" in last_prompt
    assert f"I should check what it is.\nAI: Assistant, does this image show a cat? {P0}\nAssistant: yes" in last_prompt
    assert last_prompt.endswith("\nAI:") and f"New input:\nQuestion: what animal is this? Short answer: {P0}\n" in last_prompt
    assert llm.calls[0][1].stop == ("\nAssistant: ", "\nHuman:", "\nFor example:", "\nNew input:")


def test_unknown_tool_gets_one_corrective_observation():
    llm = FakeLLM([f" Yes\nAction: Segment Anything\nAction Input: {P0}", " No\nAI: a cat"])
    ans = agent(VisualChatGPT, llm).answer_batch([req()])[0]
    step = ans.trace["transcript"][0]
    assert "unknown tool 'Segment Anything'" in step["observation"] and "Detect Objects" in step["observation"]
    assert ans.trace["parse_errors"] == 1 and ans.tool_calls == 0 and ans.text == "a cat"


def test_mm_react_unroutable_request_and_missing_path():
    llm = FakeLLM([f" Assistant, paint this blue {P0}", " Assistant, what objects are there?", " cat"])
    ans = agent(MMReact, llm, implicit_image=False, image_understanding=False).answer_batch([req()])[0]
    s = ans.trace["transcript"]
    assert "cannot handle" in s[0]["observation"] and "image file name" in s[1]["observation"]
    assert ans.trace["parse_errors"] == 2 and ans.tool_calls == 0 and ans.text == "cat"
    # the model may not write the expert's (or the human's) turn itself
    llm = FakeLLM([" Assistant: a cat", " a dog"])
    ans = agent(MMReact, llm).answer_batch([req()])[0]
    assert ans.trace["transcript"][0]["kind"] == "malformed" and ans.text == "a dog"
    # by default a request without a file name is about the sample's image
    llm = FakeLLM([" Assistant, what objects are there?", " cat"])
    ans = agent(MMReact, llm, image_understanding=False).answer_batch([req()])[0]
    assert ans.tool_calls == 1 and ans.trace["transcript"][0]["observation"].startswith("cat (0.91")
    # with MM-REACT's image-understanding expert, a request no keyword routes goes to it (authors' rule)
    llm = FakeLLM([f" Assistant, paint this blue {P0}", " cat"])
    ans = agent(MMReact, llm).answer_batch([req()])[0]
    assert ans.trace["transcript"][0]["tool"] == "Image Understanding"


@pytest.mark.parametrize(
    "action_input, message",
    [(f"{P0}, and a dog", "bad input for Detect Objects"), ("image/deadbeef.png", "no image named image/deadbeef.png"), ("cat.jpg", "bad input")],
)
def test_bad_arguments_become_observations(action_input: str, message: str):
    llm = FakeLLM([f" Yes\nAction: Detect Objects\nAction Input: {action_input}", " No\nAI: cat"])
    ans = agent(VisualChatGPT, llm).answer_batch([req()])[0]
    assert message in ans.trace["transcript"][0]["observation"]
    assert ans.trace["parse_errors"] == 1 and ans.error is None and ans.text == "cat"
    assert ans.parse_errors == 1 and ans.tool_failures == 0  # bad input is the agent's error, not the tool's


def test_tool_that_raises_is_an_observation_not_a_crash():
    llm = FakeLLM([f" Yes\nAction: Read Text\nAction Input: {P0}", " No\nAI: a stop sign"])
    ans = agent(VisualChatGPT, llm, ocr_raises=True).answer_batch([req()])[0]
    obs = ans.trace["transcript"][0]["observation"]
    assert obs == "Read Text failed: RuntimeError: ocr model exploded"
    assert ans.error is None and ans.text == "a stop sign" and ans.tool_calls == 1
    assert ans.tool_failures == 1 == ans.trace["tool_failures"] and ans.parse_errors == 0


def test_a_tool_failing_on_a_demonstration_counts_as_a_tool_failure():
    shots = (Shot("d1", "shot1", img("blue"), "Question: what animal is this? Short answer:", "dog"),)
    llm = FakeLLM([" No\nAI: cat"])
    ans = agent(VisualChatGPT, llm, ocr_raises=True, shot_tool="Read Text").answer_batch([req(shots=shots)])[0]
    assert ans.trace["demos"][0]["observation"].startswith("Read Text failed")
    assert ans.tool_calls == 1 and ans.tool_failures == 1 and ans.text == "cat"


def test_step_limit_forces_a_final_answer():
    act = f" Yes\nAction: Classify Image\nAction Input: {P0}"
    llm = FakeLLM([act, act, "tabby cat\nmore"])
    ans = agent(VisualChatGPT, llm, max_steps=2).answer_batch([req()])[0]
    assert ans.trace["budget_exhausted"] and ans.trace["answer_source"] == "forced_final"
    assert ans.text == "tabby cat" and ans.tool_calls == 2 and ans.budget_exhausted
    forced_prompt, forced_settings = llm.calls[-1][0][0], llm.calls[-1][1]
    assert forced_prompt.endswith("<assistant>\nThought: Do I need to use a tool? No\nAI:")
    assert forced_settings.max_new_tokens == 8 and forced_settings.stop == ("\n",)


def test_token_budget_forces_a_final_answer():
    act = f" Yes\nAction: Classify Image\nAction Input: {P0}"
    llm = FakeLLM([act, "cat"])
    ans = agent(VisualChatGPT, llm, step_tokens=10, token_budget=15).answer_batch([req()])[0]
    assert len(llm.calls) == 2 and ans.trace["budget_exhausted"] and ans.text == "cat"


def test_format_ignored_twice_takes_the_text_as_answer():
    llm = FakeLLM([" The picture is of a cat.", " Yes. It is a tabby cat.\nmore"])
    ans = agent(VisualChatGPT, llm).answer_batch([req()])[0]
    s = ans.trace["transcript"]
    assert s[0]["kind"] == "malformed" and "Could not parse LLM output" in s[0]["observation"]
    assert ans.text == "It is a tabby cat." and ans.trace["answer_source"] == "free_text"
    assert ans.trace["parse_errors"] == 2 and ans.parse_errors == 2


def test_answer_cut_at_newline_and_to_max_new_tokens():
    llm = FakeLLM([" No\nAI: one two three four five six\nHuman: x"])
    ans = agent(VisualChatGPT, llm).answer_batch([req(max_new_tokens=3)])[0]
    assert ans.text == "one two three"


def test_llm_text_is_never_executed(monkeypatch, tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"

    def forbidden(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    llm = FakeLLM(
        [
            f" Yes\nAction: Detect Objects\nAction Input: {payload}",
            f" Yes\nAction: {payload}\nAction Input: {P0}",
            f" Yes\nAction: Check Image Shows\nAction Input: {P0}, {payload}",
            "cat",
        ]
    )
    ans = agent(VisualChatGPT, llm).answer_batch([req()])[0]
    s = ans.trace["transcript"]
    assert "bad input" in s[0]["observation"] and "unknown tool" in s[1]["observation"]
    assert "__import__" in s[2]["observation"]  # a plain query string for the scorer
    mm = FakeLLM([f" Assistant, does this image show {payload}? {P0}", "cat"])
    agent(MMReact, mm).answer_batch([req()])
    assert not marker.exists()


def test_failed_samples_do_not_raise():
    llm = FakeLLM(lambda p: " No\nAI: cat")
    a = agent(VisualChatGPT, llm, max_prompt_tokens=1200)
    long_prompt = "word " * 1300
    out = a.answer_batch([req(0, image=None), req(1, prompt=long_prompt), req(2)])
    assert out[0].error == "no image" and "prompt too long" in out[1].error
    assert out[2].error is None and out[2].text == "cat"


def test_shots_become_earlier_exchanges_or_worked_tool_transcripts():
    shots = (
        Shot("d1", "shot1", img("blue"), "Question: what animal is this? Short answer:", "dog"),
        Shot("d2", "shot2", None, "Question: what colour? Short answer:", "blue"),
    )
    p1 = image_path("shot1")
    # the papers' memory: Human/AI turns only (Visual ChatGPT: with the image's upload turn)
    llm = FakeLLM([" No\nAI: cat"])
    ans = agent(VisualChatGPT, llm).answer_batch([req(shots=shots)])[0]
    prompt = user_text(llm.calls[0][0][0])
    assert f"Human: provide a figure named {p1}." in prompt
    assert 'AI: Received.\nHuman: Question: what animal is this? Short answer:\nAI: dog\nHuman: Question: what colour?' in prompt
    assert ans.trace["shot_tool_calls"] == 0 and ans.tool_calls == 0
    for cls, expected in [
        (VisualChatGPT, f"Action: Detect Objects\nAction Input: {p1}\nObservation: cat (0.91, centre); blue ball (0.55, left)\nThought: Do I need to use a tool? No\nAI: dog"),
        (MMReact, f"AI: This is an image. Assistant, what objects do you see in this image? {p1}\nAssistant: cat (0.91, centre); blue ball (0.55, left)\nAI: dog"),
    ]:
        llm = FakeLLM([" No\nAI: cat" if cls is VisualChatGPT else " cat"])
        ans = agent(cls, llm, shot_tool="Detect Objects").answer_batch([req(shots=shots)])[0]
        prompt = llm.calls[0][0][0]
        assert expected in prompt and "what colour? Short answer:" in prompt
        assert ans.trace["shot_tool_calls"] == 1 and ans.tool_calls == 1 and ans.trace["tool_calls"] == 0


def _by_prompt(prompt: str) -> str:
    """A deterministic 'model': behaviour depends only on the prompt (its image and progress)."""
    path = re.findall(r"provide a figure named (image/\w+\.png)", prompt)[-1]
    n_obs = prompt.split("New input:")[-1].count("\nObservation:")
    if path == image_path("img1") and n_obs < 2:
        return f" Yes\nAction: Detect Objects\nAction Input: {path}" if n_obs == 0 else " no idea"
    if path == image_path("img2") and n_obs < 3:
        return f" Yes\nAction: Classify Image\nAction Input: {path}"
    return f" No\nAI: final {path} after {n_obs}"


def test_batched_stepping_equals_one_by_one():
    reqs = [req(0), req(1, "blue"), req(2)]
    batched_llm = FakeLLM(_by_prompt)
    batched = agent(VisualChatGPT, batched_llm, max_steps=3).answer_batch(reqs)
    singles = [agent(VisualChatGPT, FakeLLM(_by_prompt), max_steps=3).answer_batch([r])[0] for r in reqs]
    assert [a.text for a in batched] == [a.text for a in singles]
    assert [a.trace["transcript"] for a in batched] == [a.trace["transcript"] for a in singles]
    # samples at the same step share a call; img2 runs out of steps and gets a forced final
    assert [len(p) for p, _ in batched_llm.calls] == [3, 2, 2, 1]
    assert batched[2].trace["budget_exhausted"] and not batched[0].trace["budget_exhausted"]
    assert [a.budget_exhausted for a in batched] == [False, False, True]


@pytest.mark.slow
def test_batch_invariance_with_a_real_tiny_llm(tiny_llm):
    reqs = [req(0), req(1, "blue", prompt="Write a short caption for this image.", kind="caption")]
    bb = make_backbones(tiny_llm)
    for cls in (VisualChatGPT, MMReact):
        opts = cls.Options(step_tokens=8, max_steps=2)
        batched = cls(bb, opts, GenerationSettings()).answer_batch(reqs)
        singles = [cls(bb, opts, GenerationSettings()).answer_batch([r])[0] for r in reqs]
        assert [a.trace["transcript"] for a in batched] == [a.trace["transcript"] for a in singles]
        assert all(a.error is None for a in batched)


# ------------------------------------------------------------------------------------ real run
@pytest.mark.slow
def test_smollm2_with_packaged_tools_on_real_photos(smollm2):
    """MM-REACT format with the first turn primed: the packaged 135M model then asks a real tool.

    (Unprimed and zero-shot it rarely calls tools; docs/paradigms/tool_agent.md gives the rates.)
    """
    skdata = pytest.importorskip("skimage.data")
    from harness.models.tools import default_tools

    try:
        box = ToolBox(default_tools())
        photos = {"chelsea": skdata.chelsea(), "coffee": skdata.coffee()}
    except Exception as exc:  # pragma: no cover - depends on installed packages
        pytest.skip(f"packaged tools or skimage photos unavailable: {exc}")
    bb = SimpleNamespace(llm=smollm2, tools=box, scorer=FakeScorer())
    reqs = [
        req(i, image=Image.fromarray(a).convert("RGB"), image_id=name, prompt="Write a short caption for this image.", kind="caption")
        for i, (name, a) in enumerate(photos.items())
    ]
    opts = MMReact.Options(tools=("Detect Objects", "Classify Image"), step_tokens=20, max_steps=2,
                           force_first_tool=True, image_understanding=False)
    answers = MMReact(bb, opts, GenerationSettings()).answer_batch(reqs)
    for ans in answers:
        assert ans.error is None, ans.error
        assert ans.trace["transcript"] and ans.text.strip()
        assert ans.llm_tokens_in > 0 and ans.llm_tokens_out > 0
        json.dumps(ans.trace)
    assert sum(a.trace["tool_calls"] for a in answers) >= 1
    assert box.cache_stats().misses >= 1  # a real packaged tool ran


def test_force_first_tool_primes_the_first_turn_only():
    llm = FakeLLM([f" Detect Objects\nAction Input: {P0}", " No\nAI: cat"])
    ans = agent(VisualChatGPT, llm, force_first_tool=True).answer_batch([req()])[0]
    assert llm.calls[0][0][0].endswith("<assistant>\nThought: Do I need to use a tool? Yes\nAction:")
    assert llm.calls[1][0][0].endswith("Let's think step by step.\n\n<assistant>\n") and ans.tool_calls == 1
    mm = FakeLLM([" what objects do you see?", " cat"])
    ans = agent(MMReact, mm, force_first_tool=True, image_understanding=False).answer_batch([req()])[0]
    assert mm.calls[0][0][0].endswith("<assistant>\nAI: This is an image. Assistant,") and ans.tool_calls == 1
    assert ans.text == "cat"


def test_copied_template_placeholder_is_not_an_answer():
    llm = FakeLLM([" No\nAI: [your response here]", " No\nAI: [your response here]", "cat"])
    ans = agent(VisualChatGPT, llm, max_steps=2).answer_batch([req()])[0]
    assert [s["kind"] for s in ans.trace["transcript"]] == ["malformed", "malformed", "forced_final"]
    assert ans.text == "cat" and ans.trace["budget_exhausted"]


# ------------------------------------------------------------------------- prompt structure
def _in_order(text: str, markers: Sequence[str]) -> None:
    pos = -1
    for m in markers:
        i = text.find(m, pos + 1)
        assert i > pos, f"{m!r} missing or out of order"
        pos = i


def test_visual_chatgpt_prompt_has_every_section_in_order():
    llm = FakeLLM([" No\nAI: cat"])
    shots = (Shot("d1", "shot1", img("blue"), "Question: what colour? Short answer:", "blue"),)
    agent(VisualChatGPT, llm).answer_batch([req(shots=shots)])
    prompt = user_text(llm.calls[0][0][0])
    _in_order(prompt, [
        # prefix: who the assistant is, the image file-name rules, descriptions are not to be trusted
        "Visual ChatGPT is designed to help with a wide range of text and visual tasks",
        'Every image has a file name of the form "image/xxx.png"',
        "never makes up files that do not exist",
        "is faithful to the tools' observations instead of faking the image content",
        "Human may give Visual ChatGPT new figures with a description.",
        "Overall, Visual ChatGPT is a powerful visual dialogue assistant",
        "TOOLS:\n------\n\nVisual ChatGPT has access to the following tools:\n\n",
        # tools as "name: useful when ..., input ..."
        "> Detect Objects: useful when you want to know which objects are in the image and where they are. "
        "The input to this tool should be a string, representing the image_path.",
        "> Check Image Shows: useful when",
        # format instructions
        "To use a tool, please use this format:",
        "Thought: Do I need to use a tool? Yes\nAction: the action to take, should be one of [Detect Objects, "
        "Classify Image, Read Text, Detect Faces, Check Image Shows]\nAction Input: the input to the action\n"
        "Observation: the result of the action",
        "you MUST use this format:",
        "Thought: Do I need to use a tool? No\nAI: [your response here]",
        # suffix: file-name strictness, Begin!, history (upload turns, earlier exchange), new input, scratchpad
        "You are very strict about file name correctness",
        "Begin!\n\nPrevious conversation history:\n",
        f"Human: provide a figure named {image_path('shot1')}.",
        "AI: Received.\nHuman: Question: what colour? Short answer:\nAI: blue\n",
        f"Human: provide a figure named {P0}.",
        'If you understand, say "Received".\nAI: Received.',
        "\n\nNew input: Question: what animal is this? Short answer:\n",
        "Visual ChatGPT must use tools to observe images instead of imagination.",
        "should remember to repeat important information in the final response for Human.",
        "Thought: Do I need to use a tool?  Let's think step by step.\n",
    ])
    assert prompt.count("provide a figure named") == 2


def test_mm_react_prompt_has_every_section_in_order():
    llm = FakeLLM([" cat"])
    agent(MMReact, llm).answer_batch([req()])
    prompt = user_text(llm.calls[0][0][0])
    _in_order(prompt, [
        "Human: Hey AI!\nMy name is Human.\nLet me introduce you to Assistant.",
        "you can ask Assistant by addressing him.",
        "For example:\nAI: This is an image. Assistant, what objects do you see in this image? image/",
        "Assistant: This is an image (640 x 427) with description",
        "List of object descriptions, and their location in this image:",
        "List of object tags seen in this image:",
        "In this example 640 427 is the width height dimension of the image",
        "For example:\nHuman: What is written on the sign?",
        "Assistant, what OCR text do you see in this image?",
        "These are the tasks that Assistant can handle for an image: Image Understanding, Detect Objects",
        "If the task does not fit any of the above, make sure the question has the word objects in it.",
        "make sure the question has the word OCR in it.",
        "For example:\nHuman: How many people are in this picture?",
        "List of people faces, and their location in this image:",
        "AI: There are three people in this picture.\nAI: 3",
        "\n\n\n\nOur Previous conversation history:\n",
        f"\n\nNew input:\nQuestion: what animal is this? Short answer: {P0}\n",
    ])
    assert prompt.endswith(f"Short answer: {P0}\n")  # the scratchpad slot is last


# -------------------------------------------------------------------- MM-REACT's parser
@pytest.mark.parametrize(
    "generated, expected",
    [
        # reasoning line, then the watchword on the next line
        (f"This is an image.\nAssistant, what OCR text do you see in this image? {P0}", ("Read Text", P0)),
        # two watchwords: the last one is the action
        (f"AI: Assistant, what objects do you see in this image? {P0}\nAI: No, first the text.\n"
         f"AI: Assistant, what is the OCR text in this image? {P0}", ("Read Text", P0)),
        # no keyword matches: MM-REACT's default expert
        (f"Let me look.\nAI: Assistant, tell me about this picture {P0}", ("Image Understanding", P0)),
        (f"AI: There are faces.\nAI: Assistant, are there any celebrities in this image? {P0}", ("Detect Faces", P0)),
        # no watchword: the final answer is what follows the last "AI:"
        ("The tags say tabby cat.\nAI: a tabby cat", "a tabby cat"),
        ("It is a cat", "It is a cat"),
        ("I think so.\nAI: This is an image of a cat.\nAI: cat", "cat"),
    ],
)
def test_mm_react_parser_on_multi_line_turns(generated, expected):
    from paradigms.tool_agent.formats import Call, Final, WatchwordFormat

    reg = build_registry(make_backbones(None), AgentToolsOptions(image_understanding=True))
    parsed = WatchwordFormat("Image Understanding").parse(generated, reg)
    if isinstance(expected, tuple):
        assert isinstance(parsed, Call) and (parsed.tool, parsed.fields["image"]) == expected
    else:
        assert isinstance(parsed, Final) and parsed.answer == expected


def test_mm_react_multi_line_turn_in_the_loop_keeps_reasoning_and_answers_from_the_last_ai_line():
    llm = FakeLLM([
        f"AI: This image may contain text.\nAI: Assistant, what OCR text do you see in this image? {P0}",
        "The sign reads STOP.\nAI: stop",
    ])
    ans = agent(MMReact, llm).answer_batch([req()])[0]
    assert ans.text == "stop" and ans.trace["transcript"][0]["tool"] == "Read Text"
    assert ans.trace["scratchpad"] == (
        f"AI: This image may contain text.\nAI: Assistant, what OCR text do you see in this image? {P0}\n"
        'Assistant: "STOP" (0.99, centre)\nAI:'
    )
    assert ans.trace["transcript"][1]["generated"] == "The sign reads STOP.\nAI: stop"  # reasoning kept


def test_langchain_parse_rules_for_visual_chatgpt():
    from paradigms.tool_agent.formats import Call, Final, Malformed, ReActFormat

    reg = build_registry(make_backbones(None))
    f = ReActFormat()
    # "AI:" anywhere wins; the answer is the text after the last one
    assert f.parse(f"Yes\nAction: Detect Objects\nAction Input: {P0}\nAI: a cat", reg) == Final("a cat")
    # Action / Action Input may be separated by blank lines; quotes and spaces around the input go
    p = f.parse(f'Thought: Do I need to use a tool? Yes\nAction: Check Image Shows\n\nAction Input: "{P0}, a cat"', reg)
    assert isinstance(p, Call) and p.tool == "Check Image Shows" and p.fields == {"image": P0, "query": "a cat"}
    assert isinstance(f.parse("I think it is a cat.", reg), Malformed)


def test_braces_in_the_request_are_text_not_template_slots():
    for cls, reply in ((VisualChatGPT, " No\nAI: cat"), (MMReact, " cat")):
        llm = FakeLLM([reply])
        ans = agent(cls, llm).answer_batch([req(prompt="Is {input} or {agent_scratchpad} or {chat_history} shown?")])[0]
        assert "Is {input} or {agent_scratchpad} or {chat_history} shown?" in user_text(llm.calls[0][0][0])
        assert ans.text == "cat"
