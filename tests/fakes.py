"""Test doubles shared by the test modules: one scripted LLM, tools and scorers.

``FakeLLM`` plays the role inspect_ai's ``mockllm`` or lm-eval's dummy model play there: it has the
public interface of :class:`harness.models.llm.LanguageModel` (``generate``, ``continuation_logprobs``,
``count_tokens``, ``chat_prompt``, ``fingerprint``, ``model.config``) and answers from a script, so a
test exercises a paradigm's or the runner's own logic with exact, known LLM outputs. Test tooling
only: nothing in the product imports this module or can select it from a config.
"""

from __future__ import annotations

import hashlib
import re
from types import SimpleNamespace
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from harness.interface import Answer, Paradigm, Request
from harness.models.llm import Generation, GenerationSettings, cut_at_stop

#: A scripted reply: text, or an exception the LLM raises for that prompt (a fault to plant).
Reply = str | BaseException
Script = Sequence[Reply] | Mapping[str, Reply] | Callable[[str], Reply]


def _pick(script: Any, key: str, what: str) -> Any:
    """The scripted value for ``key``: a function of it, or the first mapping entry whose key is a
    substring of it (``""`` matches everything)."""
    if callable(script):
        return script(key)
    for k, v in script.items():
        if k in key:
            return v
    raise AssertionError(f"FakeLLM: no scripted {what} matches {key[-200:]!r}")


def _words(text: str) -> int:
    return len(text.split())


class FakeLLM:
    """A scripted stand-in for the LLM backbone (see the module docstring).

    ``replies``: a list consumed in order (one entry per generated prompt, across calls), a mapping
    from a prompt substring to its reply, or a function of the prompt. ``logprobs``: a mapping from a
    substring of ``prompt + "|" + continuation`` to its log-probability, or a function
    ``(prompt, continuation) -> float``. A reply that is an exception is raised instead.

    Like the real model, ``generate`` cuts each reply at the first stop string and at
    ``max_new_tokens`` tokens (tokens here are whitespace-separated words) and reports token counts
    and whether the reply ended by itself. Every call is recorded in ``calls`` / ``scored``.
    """

    engine = "fake"
    has_chat_template = True

    def __init__(
        self,
        replies: Script = (),
        logprobs: Mapping[str, float] | Callable[[str, str], float] | None = None,
        *,
        name: str = "fake-llm",
        context_length: int = 2048,
    ) -> None:
        self.replies = replies if callable(replies) or isinstance(replies, Mapping) else list(replies)
        self.logprobs = logprobs
        self.name = name
        self.fingerprint = f"fake-llm:{name}"
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context_length))
        self.calls: list[tuple[list[str], GenerationSettings]] = []
        self.scored: list[tuple[str, str]] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def chat_prompt(self, user: str, system: str | None = None, assistant_prefix: str = "") -> str:
        head = f"<system>\n{system}\n" if system else ""
        return f"{head}<user>\n{user}\n<assistant>\n{assistant_prefix}"

    def count_tokens(self, text: str) -> int:
        return _words(text)

    def _reply(self, prompt: str) -> str:
        if isinstance(self.replies, list):
            if not self.replies:
                raise AssertionError(f"FakeLLM: script exhausted at prompt {prompt[-200:]!r}")
            reply = self.replies.pop(0)
        else:
            reply = _pick(self.replies, prompt, "reply")
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings = GenerationSettings(), *, batch_size: int = 8
    ) -> list[Generation]:
        self.calls.append((list(prompts), settings))
        out = []
        for p in prompts:
            text, stopped = cut_at_stop(self._reply(p), settings.stop)
            ends = [m.end() for m in re.finditer(r"\S+", text)]
            if len(ends) > settings.max_new_tokens:  # the token limit, before any stop string
                text, stopped = text[: ends[settings.max_new_tokens - 1]] if settings.max_new_tokens else "", False
            out.append(Generation(text, self.count_tokens(p), self.count_tokens(text), stopped))
        return out

    def continuation_logprobs(
        self, prompts: Sequence[str], continuations: Sequence[str], *, batch_size: int = 8
    ) -> list[float]:
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations differ in length")
        if self.logprobs is None:
            raise AssertionError("FakeLLM: no log-probabilities scripted")
        out = []
        for p, c in zip(prompts, continuations):
            self.scored.append((p, c))
            lp = self.logprobs(p, c) if callable(self.logprobs) else _pick(self.logprobs, f"{p}|{c}", "log-prob")
            out.append(float(lp))
        return out

    def num_parameters(self) -> int:
        return 0


class ScriptedTools:
    """Tool box double for converters: fixed outputs (real output types) per tool; counts calls and
    raises for one image id on demand."""

    def __init__(self, outputs: Mapping[str, Any], fail_on: str = "") -> None:
        self.outputs, self.fail_on = dict(outputs), fail_on
        self.calls: list[tuple[str, str]] = []

    def fingerprint(self) -> str:
        return "scripted-tools:" + ",".join(sorted(self.outputs))

    def run(self, tool_name: str, image_id: str, image: Image.Image, **kw: Any) -> Any:
        self.calls.append((tool_name, image_id))
        if image_id == self.fail_on:
            raise RuntimeError(f"{tool_name} crashed")
        return self.outputs[tool_name]


class FakeTool:
    """A vision tool stand-in with a fixed, image-dependent text output (put a real ToolBox around it)."""

    def __init__(self, name: str, fn: Callable[[Image.Image], str]) -> None:
        self.name, self.fn, self.calls = name, fn, 0

    def fingerprint(self) -> str:
        return self.name

    def __call__(self, image: Image.Image, **kwargs: object) -> SimpleNamespace:
        self.calls += 1
        text = self.fn(image)
        return SimpleNamespace(to_text=lambda: text)


class FakeScorer:
    """An image–text scorer whose one image is closest to any text mentioning a cat."""

    name = "fake-scorer"

    def embed_images(self, images, image_ids):  # noqa: ANN001
        return torch.tensor([[1.0, 0.0]])

    def embed_texts(self, texts):  # noqa: ANN001
        return torch.tensor([[0.8, 0.6]]) if "cat" in texts[0] else torch.tensor([[0.0, 1.0]])

    def similarity(self, a, b):  # noqa: ANN001
        return a @ b.T


class TrigramScorer:
    """Character-trigram bag vectors; image ``i`` is represented by the text ``targets[i]``."""

    name = "trigram-test"
    logit_scale = 100.0

    def __init__(self, targets: dict[str, str]) -> None:
        self.targets = targets
        self.images_embedded: list[str] = []

    @staticmethod
    def vec(text: str) -> torch.Tensor:
        v = torch.zeros(512)
        t = f"  {text.lower()} "
        for i in range(len(t) - 2):
            v[int(hashlib.md5(t[i : i + 3].encode()).hexdigest(), 16) % 512] += 1.0
        return v / (v.norm() + 1e-9)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self.vec(t) for t in texts])

    def embed_images(self, images: list[Any], image_ids: list[str]) -> torch.Tensor:
        self.images_embedded += list(image_ids)
        return torch.stack([self.vec(self.targets[i]) for i in image_ids])


class RecorderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Recorder(Paradigm):
    """A paradigm double for runner tests: answers the image's mean brightness; records which samples
    it was asked (class-level, reset by the test); raises, or fails the sample, on demand."""

    family = "text_conversion"
    variant = "recorder"
    uses: ClassVar[tuple[str, ...]] = ()
    asked: ClassVar[list[str]] = []
    raise_for: ClassVar[dict[str, BaseException]] = {}

    catch: ClassVar[bool] = False  # like most paradigms: turn a sample's exception into Answer.failed

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        out = []
        for r in requests:
            if r.sample_id in self.raise_for:
                if not self.catch:
                    raise self.raise_for[r.sample_id]
                try:
                    raise self.raise_for[r.sample_id]
                except Exception as exc:  # noqa: BLE001
                    out.append(Answer.failed(f"{type(exc).__name__}: {exc}"))
                    continue
            out.append(None)
        if self.catch and any(a is not None for a in out):
            Recorder.asked.extend(r.sample_id for r, a in zip(requests, out) if a is None)
            return [a or Answer(text=str(int(np.asarray(r.image).mean()))) for r, a in zip(requests, out)]
        Recorder.asked.extend(r.sample_id for r in requests)
        return [Answer(text=str(int(np.asarray(r.image).mean()))) for r in requests]
