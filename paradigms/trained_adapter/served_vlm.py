"""``trained_adapter/served_vlm``: a vision-language model behind an OpenAI-compatible chat endpoint.

vLLM, SGLang and ``transformers serve`` serve LLaVA, Qwen-VL, IDEFICS and SmolVLM checkpoints with
images as chat content parts. Their adapter was trained by their authors (``trainable_params`` = 0)
and the run's own LLM is not used. Each request is one chat: demonstrations as earlier user/assistant
turns, each user turn carrying its image as a base64 PNG data URL, then the query's image and
prompt — the same layout as ``vlm_pretrained`` uses in-process. Transport, retries, concurrency and
failures are those of the served LLM (``harness/models/served_llm.py``): a request that fails after
its retries stops the run without caching anything of the batch.
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any, ClassVar, Literal, Sequence

from pydantic import Field

from harness.config import ServedLLMSource, ServedPrice, Strict
from harness.interface import Answer, Paradigm, Request
from harness.models.llm import GenerationSettings
from harness.models.served_llm import llm_cost
from harness.registry import register_paradigm


class ServedVlmOptions(Strict):
    base_url: str
    model: str  # the id the server knows the VLM by; part of every cache key
    api_key_env: str | None = None
    max_concurrency: int = Field(8, ge=1, le=1024)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, le=50)
    price: ServedPrice | None = None
    #: Overrides the task's ``max_new_tokens`` when set.
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    image_format: Literal["png", "jpeg"] = "png"  # png: lossless, what the model sees is the image
    system: str | None = None

    def endpoint(self) -> ServedLLMSource:
        return ServedLLMSource(source="openai", base_url=self.base_url, model=self.model, api="chat",
                               api_key_env=self.api_key_env, max_concurrency=self.max_concurrency,
                               timeout_s=self.timeout_s, max_retries=self.max_retries, price=self.price)


def image_part(image: Any, fmt: str = "png") -> dict[str, Any]:
    """An OpenAI ``image_url`` content part holding the image itself (base64 data URL)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG" if fmt == "png" else "JPEG", **({"quality": 95} if fmt == "jpeg" else {}))
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/{fmt};base64,{data}"}}


def conversation(r: Request, fmt: str = "png", system: str | None = None) -> list[dict[str, Any]]:
    """Chat turns for one request: shots as earlier user/assistant turns (with their images), then the query."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for s in r.shots:
        content = ([image_part(s.image, fmt)] if s.image is not None else []) + [{"type": "text", "text": s.prompt}]
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": s.answer})
    messages.append({"role": "user", "content": [image_part(r.image, fmt), {"type": "text", "text": r.prompt}]})
    return messages


@register_paradigm
class ServedVlm(Paradigm):
    family: ClassVar[str] = "trained_adapter"
    variant: ClassVar[str] = "served_vlm"
    description: ClassVar[str] = (
        "a vision-language model behind an OpenAI-compatible chat endpoint (vLLM/SGLang-served LLaVA, "
        "Qwen-VL, IDEFICS): images as base64 content parts, demonstrations as earlier turns"
    )
    Options: ClassVar[type] = ServedVlmOptions
    uses: ClassVar[tuple[str, ...]] = ()
    #: where and how fast the endpoint is reached (URL, key, concurrency, timeouts, price) never changes an answer
    speed_only: ClassVar[frozenset[str]] = frozenset(ServedLLMSource.NOT_IDENTITY)

    def __init__(self, backbones: Any, options: Any, generation: Any) -> None:
        super().__init__(backbones, options, generation)
        self._client: Any = None

    def fingerprint(self) -> dict[str, Any]:
        """The endpoint's model id and what shapes the request; never the URL, key or speed settings."""
        from harness.models.served_llm import served_fingerprint

        seed = getattr(self.backbones, "seed", 0)
        return {"paradigm": self.name, "options": self.keyed_options(), "endpoint": served_fingerprint(self.options.endpoint(), seed)}

    @property
    def client(self) -> Any:
        if self._client is None:
            from harness.models.served_llm import ServedLanguageModel

            self._client = ServedLanguageModel(self.options.endpoint(), seed=getattr(self.backbones, "seed", 0))
        return self._client

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        answers: list[Answer | None] = [None] * len(requests)
        convs: list[tuple[int, list[dict[str, Any]], int]] = []
        for i, r in enumerate(requests):
            if r.image is None:
                answers[i] = Answer.failed("no image", sample_id=r.sample_id)
                continue
            convs.append((i, conversation(r, self.options.image_format, self.options.system),
                          self.options.max_new_tokens or r.max_new_tokens))
        for n in sorted({n for _, _, n in convs}):
            group = [(i, m) for i, m, k in convs if k == n]
            settings = GenerationSettings(n, tuple(self.generation.stop), self.generation.greedy, self.generation.temperature)
            t0 = time.perf_counter()
            gens = self.client.chat([m for _, m in group], settings)
            share = (time.perf_counter() - t0) / len(group)
            for (i, m), g in zip(group, gens):
                trace: dict[str, Any] = {"images": sum(1 for t in m if isinstance(t.get("content"), list)),
                                         "turns": len(m), "finished": g.finished}
                if self.options.price is not None:  # the runner reports it as the row's llm_cost
                    trace["llm_cost"] = llm_cost(g.tokens_in, g.tokens_out, self.options.price)
                answers[i] = Answer(text=g.text.strip(), latency_s=share, llm_tokens_in=g.tokens_in,
                                    llm_tokens_out=g.tokens_out, trace=trace)
        return [a for a in answers if a is not None]
