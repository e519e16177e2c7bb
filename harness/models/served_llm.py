"""An LLM behind an OpenAI-compatible endpoint, speaking the same text interface as the in-process one.

vLLM, SGLang, TGI, Ollama, llama.cpp's server, ``transformers serve`` and OpenAI itself all accept
the OpenAI ``/v1/completions`` and ``/v1/chat/completions`` requests. :class:`ServedLanguageModel`
offers what text-in/text-out paradigms call on :class:`~harness.models.llm.LanguageModel`
(``chat_prompt``, ``count_tokens``, ``generate``, ``continuation_logprobs``), sends every prompt of
a batch concurrently (at most ``max_concurrency`` in flight) through the official async client, and
retries what is worth retrying:

* 429, 5xx, timeouts and dropped connections: exponential backoff with full jitter, at least as long
  as the server's ``Retry-After``; after ``max_retries`` the batch raises
  :class:`~harness.interface.RetryableFailure`, which the runner never caches as an answer;
* 401/403/404 (wrong key, wrong model name): the same run-stopping failure, at once;
* any other 4xx: the request itself is wrong (e.g. a prompt longer than the context): a
  ``ValueError`` that fails that sample like any other bad sample.

The API key is read from the environment variable named in the config and handed to the client
only; it is never part of a fingerprint, log line or error message.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from harness.interface import RetryableFailure
from harness.models.llm import Generation, GenerationSettings, ModelUnavailable, cut_at_stop, llm_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    from harness.config import LLMSource, ServedLLMSource

log = logging.getLogger(__name__)

#: Marks a prompt built by :meth:`ServedLanguageModel.chat_prompt` for the chat API: the messages as
#: JSON between two markers, then the assistant turn's text so far (prefix and agent scratchpad).
_CHAT_OPEN = "\x00mmbench-chat\x00"
_CHAT_CLOSE = "\x00/mmbench-chat\x00"
#: HTTP statuses that mean "this run cannot go on", not "this sample is bad".
_RUN_STOPPING = {401, 403, 404}
#: Paradigm families that read the LLM's logits, embeddings or hidden states (when they use the run's LLM).
NEEDS_LLM_INTERNALS: dict[str, str] = {
    "guided_decoding": "steers every decoding step with the LLM's next-token logits",
    "trained_adapter": "feeds image features into the LLM's input embeddings and trains through its hidden states",
}
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 300.0


@dataclass
class CallStats:
    """What the endpoint cost so far: calls, retries, tokens and seconds spent waiting on it."""

    calls: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    retry_reasons: dict[str, int] = field(default_factory=dict)

    def as_metrics(self, samples: int) -> dict[str, float]:
        """Run-level MLflow metrics (``samples``: how many samples this process computed)."""
        return {
            "served_calls": float(self.calls),
            "served_calls_per_sample": self.calls / samples if samples else 0.0,
            "served_retries": float(self.retries),
            "served_latency_per_call_s": self.latency_s / self.calls if self.calls else 0.0,
            "served_tokens_in": float(self.tokens_in),
            "served_tokens_out": float(self.tokens_out),
        }


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, ``retry-after`` seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        when = email.utils.parsedate_to_datetime(ra) if ra else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def backoff_s(attempt: int, retry_after: float | None, rng: random.Random, base: float = BACKOFF_BASE_S) -> float:
    """Full-jitter exponential backoff, never shorter than the server's Retry-After."""
    jittered = rng.uniform(0, min(BACKOFF_CAP_S, base * 2**attempt))
    if retry_after is not None:
        return min(RETRY_AFTER_CAP_S, retry_after) + jittered * 0.1
    return jittered


class _Loop:
    """One event loop on a daemon thread: the async client and its connection pool live there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="served-llm", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]


def load_tokenizer(src: "LLMSource", cache_dir: Path | None) -> Any:
    """The local copy's tokenizer (packaged models are converted once, as for in-process use)."""
    from transformers import AutoTokenizer

    from harness.models.llm import _convert_packaged, default_cache_dir

    if src.source == "packaged":
        folder: str | Path = _convert_packaged(src.name, cache_dir or default_cache_dir())
        kwargs: dict[str, Any] = {}
    else:
        folder = src.name
        kwargs = {"revision": src.revision} if src.source == "hub" and src.revision else {}
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=src.trust_remote_code, **kwargs)
    except OSError as exc:
        raise ModelUnavailable(f"cannot load the served LLM's tokenizer {src.name!r}: {exc}") from exc


def served_llm_refusal(family: str, uses: Sequence[str]) -> str | None:
    """Why a paradigm cannot run with a served LLM (None when it can): checked at plan time."""
    if "llm" in uses and family in NEEDS_LLM_INTERNALS:
        return (f"{family} {NEEDS_LLM_INTERNALS[family]}, which an OpenAI-compatible endpoint does not expose; "
                "run it with an in-process models.llm (source: packaged, hub or local), or drop it from this config")
    return None


def served_fingerprint(cfg: "ServedLLMSource", seed: int) -> str:
    """The endpoint's model id, API flavour, what we send besides the run's settings, and the seed.

    Never the key, never the URL (ports change; credentials are refused by the config). Computed
    without contacting the server, so a run answered from the cache needs no endpoint.
    """
    parts = [f"openai:{cfg.api}:{cfg.model}", "greedy=temperature0,top_p1", f"seed={seed}"]
    if cfg.tokenizer is not None:
        t = cfg.tokenizer
        parts.append("tokenizer=" + llm_fingerprint(t.source, t.name, t.revision))
    else:
        parts.append("tokens=server-usage")
    parts.append(f"logprobs={cfg.logprobs}")
    if cfg.api == "chat" and cfg.chat_prefill:
        parts.append("chat_prefill")
    return ":".join(parts)


class ServedLanguageModel:
    """The run's LLM when ``models.llm.source`` is ``openai``: text in, text out, over HTTP."""

    #: Paradigms that read logits, embeddings or hidden states check this at plan time.
    in_process = False

    def __init__(
        self,
        cfg: "ServedLLMSource",
        *,
        seed: int = 0,
        cache_dir: Path | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        self.config = cfg
        self.seed = seed
        self.name = cfg.model
        self.fingerprint = served_fingerprint(cfg, seed)
        self.engine = "served"
        self.cache_dir = cache_dir
        self.stats = CallStats()
        self._backoff_base = backoff_base_s
        self._rng = random.Random(seed)  # jitter only; never touches answers
        self._tokenizer: Any = None
        self._local: Any = None
        self._loop: _Loop | None = None
        self._client: Any = None
        self._lock = threading.Lock()
        if cfg.logprobs == "local" and cfg.tokenizer is None:
            raise ModelUnavailable("models.llm.logprobs: local needs models.llm.tokenizer (the local copy to score with)")
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            raise ModelUnavailable(f"models.llm.api_key_env names {cfg.api_key_env!r}, which is not set")
        # What paradigms read as ``llm.model.config`` (context length checks); None = the server's own limit.
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=None))

    # ------------------------------------------------------------------ local parts
    @property
    def tokenizer(self) -> Any:
        if self.config.tokenizer is None:
            return None
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.tokenizer, self.cache_dir)
        return self._tokenizer

    @property
    def has_chat_template(self) -> bool:
        if self.config.api == "chat":
            return True
        return bool(self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, user: str, system: str | None = None, assistant_prefix: str = "") -> str:
        """Completions API: the local tokenizer's template (as in-process). Chat API: messages for the server."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        if self.config.api == "chat":
            return _CHAT_OPEN + json.dumps(messages, ensure_ascii=False) + _CHAT_CLOSE + assistant_prefix
        if not self.has_chat_template:
            head = f"{system}\n\n" if system else ""
            return f"{head}{user}\n{assistant_prefix}"
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + assistant_prefix

    def count_tokens(self, text: str) -> int:
        """Exact with a local tokenizer; otherwise a labelled estimate (4 characters a token)."""
        messages, tail = split_chat_prompt(text)
        tok = self.tokenizer
        if tok is None:
            body = tail if messages is None else json.dumps(messages) + tail
            return math.ceil(len(body.encode("utf-8")) / 4)
        if messages is not None:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + tail
        return len(tok(text, add_special_tokens=False).input_ids)

    # ------------------------------------------------------------------ transport
    def _ensure_client(self) -> None:
        with self._lock:
            if self._client is not None:
                return
            try:
                from openai import AsyncOpenAI
            except ImportError as exc:  # pragma: no cover - a declared dependency
                raise ModelUnavailable("models.llm.source: openai needs the 'openai' package") from exc
            key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
            self._loop = _Loop()

            async def make() -> Any:
                # Our own retry policy (below) replaces the client's; it must not retry 4xx.
                return AsyncOpenAI(base_url=self.config.base_url, api_key=key or "unused",
                                   timeout=self.config.timeout_s, max_retries=0)

            self._client = self._loop.run(make())

    async def _call(self, kind: str, kwargs: dict[str, Any], sem: asyncio.Semaphore) -> Any:
        import openai

        attempt = 0
        while True:
            async with sem:
                t0 = time.perf_counter()
                try:
                    if kind == "chat":
                        resp = await self._client.chat.completions.create(**kwargs)
                    else:
                        resp = await self._client.completions.create(**kwargs)
                    self.stats.latency_s += time.perf_counter() - t0
                    self.stats.calls += 1
                    return resp
                except openai.APIStatusError as exc:
                    status, headers = exc.status_code, exc.response.headers
                    if status in _RUN_STOPPING:
                        raise RetryableFailure(
                            f"the LLM endpoint refused the request with HTTP {status} ({_short(exc)}); check "
                            f"models.llm.model ({self.config.model!r}) and the key in models.llm.api_key_env"
                        ) from None
                    if status != 429 and status < 500:
                        raise ValueError(f"the LLM endpoint rejected the request: HTTP {status}: {_short(exc)}") from None
                    reason, wait = f"HTTP {status}", retry_after_s(headers)
                except openai.APITimeoutError:
                    reason, wait = "timeout", None
                except openai.APIConnectionError as exc:  # refused, reset, dropped mid-response
                    reason, wait = f"connection: {type(exc.__cause__ or exc).__name__}", None
            if attempt >= self.config.max_retries:
                raise RetryableFailure(
                    f"the LLM endpoint {self.config.base_url} failed after {attempt + 1} attempts (last: {reason}); "
                    "answers computed so far are cached: run the same command again once it is back"
                )
            self.stats.retries += 1
            self.stats.retry_reasons[reason] = self.stats.retry_reasons.get(reason, 0) + 1
            delay = backoff_s(attempt, wait, self._rng, self._backoff_base)
            log.warning("LLM endpoint: %s; retry %d/%d in %.2f s", reason, attempt + 1, self.config.max_retries, delay)
            await asyncio.sleep(delay)
            attempt += 1

    def _run_all(self, jobs: list[tuple[str, dict[str, Any]]], parse: Callable[[Any], Any]) -> list[Any]:
        """All requests concurrently (bounded); the first failure cancels the rest and is raised."""
        self._ensure_client()

        async def go() -> list[Any]:
            sem = asyncio.Semaphore(self.config.max_concurrency)
            tasks = [asyncio.ensure_future(self._call(k, kw, sem)) for k, kw in jobs]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

        assert self._loop is not None
        return [parse(r) for r in self._loop.run(go())]

    # ------------------------------------------------------------------ generation
    def _sampling(self, settings: GenerationSettings, stop: Sequence[str]) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.config.model, "max_tokens": settings.max_new_tokens, "seed": self.seed}
        if settings.greedy:
            kw.update(temperature=0.0, top_p=1.0)
        else:
            kw.update(temperature=settings.temperature, top_p=1.0)
        if stop:
            kw["stop"] = list(stop)[:4]  # the OpenAI API takes at most four; the rest are cut below
        return kw

    def generate(
        self, prompts: Sequence[str], settings: GenerationSettings = GenerationSettings(), *, batch_size: int = 8
    ) -> list[Generation]:
        """Each prompt's continuation, cut at the first stop string (``batch_size`` is the server's business)."""
        stop = tuple(s for s in settings.stop if s)
        return self._generations(self._run_all([self._job(p, settings, stop) for p in prompts], lambda r: r), stop)

    def chat(self, conversations: Sequence[list[dict[str, Any]]], settings: GenerationSettings) -> list[Generation]:
        """Chat-API replies to ready-made message lists (content parts may carry images as data URLs)."""
        stop = tuple(s for s in settings.stop if s)
        kw = self._sampling(settings, stop)
        jobs = [("chat", {**kw, "messages": list(m)}) for m in conversations]
        return self._generations(self._run_all(jobs, lambda r: r), stop)

    def _generations(self, results: list[Any], stop: tuple[str, ...]) -> list[Generation]:
        out = []
        for r in results:
            choice = r.choices[0]
            raw = (choice.message.content if hasattr(choice, "message") else choice.text) or ""
            text, hit_stop = cut_at_stop(raw, stop)
            usage = getattr(r, "usage", None)
            n_in = int(getattr(usage, "prompt_tokens", 0) or 0)
            n_out = int(getattr(usage, "completion_tokens", 0) or 0)
            self.stats.tokens_in += n_in
            self.stats.tokens_out += n_out
            finished = hit_stop or choice.finish_reason == "stop"
            out.append(Generation(text=text, tokens_in=n_in, tokens_out=n_out, finished=finished))
        return out

    def _job(self, prompt: str, settings: GenerationSettings, stop: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
        kw = self._sampling(settings, stop)
        messages, tail = split_chat_prompt(prompt)
        if self.config.api == "completions":
            if messages is not None:  # pragma: no cover - chat_prompt never builds these for completions
                raise ValueError("a chat-API prompt was sent to models.llm.api: completions")
            return "completions", {**kw, "prompt": prompt}
        if messages is None:
            messages, tail = [{"role": "user", "content": prompt}], ""
        if tail:
            if not self.config.chat_prefill:
                raise RetryableFailure(
                    "this paradigm continues a partial assistant turn (agent scratchpad or answer prefix), which "
                    "the chat API can do only with models.llm.chat_prefill: true on a server that supports "
                    "continue_final_message (vLLM, SGLang); otherwise use models.llm.api: completions"
                )
            messages = [*messages, {"role": "assistant", "content": tail}]
            kw["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        return "chat", {**kw, "messages": messages}

    # ------------------------------------------------------------------ scoring
    def continuation_logprobs(
        self, prompts: Sequence[str], continuations: Sequence[str], *, batch_size: int = 8
    ) -> list[float]:
        """Sum of log p(continuation | prompt): from the endpoint (echoed prompt log-probs) or the local copy."""
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations differ in length")
        if self.config.logprobs == "local":
            return self._local_model().continuation_logprobs(prompts, continuations, batch_size=batch_size)
        if self.config.api == "chat":
            raise RetryableFailure(
                "log-probabilities of given answers (PICa's ensemble, multiple-choice scoring) need the "
                "completions API's echoed prompt log-probs; the chat API returns them only for generated "
                "tokens. Use models.llm.api: completions, or models.llm.logprobs: local (scores with the "
                "local copy in models.llm.tokenizer)"
            )
        jobs = [
            ("completions", {"model": self.config.model, "prompt": p + c, "max_tokens": 1, "echo": True,
                             "logprobs": 0, "temperature": 0.0, "seed": self.seed})
            for p, c in zip(prompts, continuations)
        ]
        results = self._run_all(jobs, lambda r: r)
        scores = []
        for p, c, r in zip(prompts, continuations, results):
            lp = getattr(r.choices[0], "logprobs", None)
            if lp is None or not getattr(lp, "token_logprobs", None) or not getattr(lp, "text_offset", None):
                raise RetryableFailure(
                    f"the LLM endpoint {self.config.base_url} returned no prompt log-probabilities (echo + "
                    "logprobs), which PICa's ensemble and multiple-choice scoring need. vLLM and OpenAI's "
                    "completions models return them; for other servers set models.llm.logprobs: local with "
                    "models.llm.tokenizer naming a local copy of the same weights"
                )
            scores.append(echoed_continuation_logprob(lp, len(p), len(p) + len(c)))
        return scores

    def _local_model(self) -> Any:
        if self._local is None:
            from harness.models.llm import LanguageModel

            t = self.config.tokenizer
            assert t is not None
            self._local = LanguageModel.load(t.source, t.name, revision=t.revision, dtype=t.dtype, device=t.device,
                                             trust_remote_code=t.trust_remote_code, cache_dir=self.cache_dir,
                                             engine="hf")
        return self._local

    def num_parameters(self) -> int:
        return 0  # not known through the API

    def close(self) -> None:
        if self._loop is not None:
            if self._client is not None:
                try:
                    self._loop.run(self._client.close())
                except Exception:  # noqa: BLE001 - closing a dead connection is not an error
                    pass
            self._loop.loop.call_soon_threadsafe(self._loop.loop.stop)
            self._loop = None
            self._client = None


def echoed_continuation_logprob(lp: Any, start: int, end: int) -> float:
    """Sum the echoed log-probs of the tokens that hold continuation characters ``[start, end)``.

    A token counts when any of its characters lies in the continuation (a token merging the
    prompt's last characters with the continuation's first is the continuation's); tokens starting
    at or after ``end`` were generated, not echoed, and are skipped.
    """
    total = 0.0
    for off, tok, val in zip(lp.text_offset, lp.tokens, lp.token_logprobs):
        if off < end and off + len(tok) > start and val is not None:
            total += float(val)
    return total


def split_chat_prompt(prompt: str) -> tuple[list[dict[str, Any]] | None, str]:
    """Messages and assistant tail of a chat-API prompt; (None, prompt) for a plain completion prompt."""
    if not prompt.startswith(_CHAT_OPEN):
        return None, prompt
    end = prompt.find(_CHAT_CLOSE)
    if end < 0:
        return None, prompt
    return json.loads(prompt[len(_CHAT_OPEN) : end]), prompt[end + len(_CHAT_CLOSE) :]


def _short(exc: Exception) -> str:
    msg = getattr(exc, "message", None) or str(exc)
    return msg[:300]


def llm_cost(tokens_in: int, tokens_out: int, price: Any) -> float | None:
    """Money for one sample's tokens under the configured price table (None without one)."""
    if price is None:
        return None
    return (tokens_in * price.input_per_mtok + tokens_out * price.output_per_mtok) / 1e6
