"""The ``guided_decoding/magic`` paradigm: MAGIC search of the shared LLM, steered by the shared scorer.

With ``adapt_lm`` set, captions are decoded by a copy of the shared LLM fine-tuned on caption
text (MAGIC's LM domain adaptation, ``lm_adaptation.py``), from the adaptation's start text.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import Field

from harness.chunking import answer_in_chunks
from harness.config import Strict
from harness.interface import Answer, Paradigm, Request, TrainingRecord
from harness.models.llm import cut_at_stop, default_cache_dir
from harness.registry import register_paradigm
from paradigms.guided_decoding.common import (
    ImageEmbeddings,
    TextEmbeddingMemo,
    PreparedPrompt,
    build_prompt,
    cosine_to_images,
    encode_left_padded,
    eos_ids,
)
from paradigms.guided_decoding.lm_adaptation import (
    AdaptationOptions,
    AdaptedLM,
    CaptionCorpus,
    adapt_language_model,
    adaptation_key,
    base_llm_identity,
    load_corpus,
    load_heldout,
)
from paradigms.guided_decoding.magic_search import magic_search


class MagicOptions(Strict):
    """MAGIC's settings; defaults are the authors' COCO ones (Flickr30k used k=25)."""

    k: int = Field(45, ge=1, description="candidates per step (LM top-k)")
    alpha: float = Field(0.1, ge=0.0, le=1.0, description="degeneration penalty weight")
    beta: float = Field(2.0, ge=0.0, description="image–text (scorer) term weight")
    max_new_tokens: int | None = Field(
        None, ge=1, description="answer length; None = the request's (16, as MAGIC's COCO setting)"
    )
    scorer_window: int = Field(60, ge=1, description="the scorer sees the last N generated tokens")
    scorer_logit_scale: float | None = Field(
        None, gt=0, description="override of the scorer's logit scale (None = the scorer's own)"
    )
    caption_prefix: str = Field("A", description="words that start every caption (MAGIC: its LM's start token)")
    chat: bool = Field(True, description="wrap the task prompt in the LLM's chat template")
    start_text: str | None = Field(
        None,
        description="captions only: the LM prompt is exactly this text (the authors: their caption LM's start "
        "token '<-start_of_text->'); task prompt, chat template and caption_prefix unused, the scorer "
        "sees generated tokens only",
    )
    scorer_special_tokens: bool = Field(
        False,
        description="decode special tokens as text in what the scorer reads (the authors do: an end-token "
        "candidate is scored as '<|endoftext|>'); False drops them",
    )
    reuse_kv_cache: bool = Field(True, description="False = recompute the prefix per candidate (naive; same answers)")
    decode_batch: int = Field(8, ge=1, description="images decoded together (memory bound; never changes answers)")
    adapt_lm: AdaptationOptions | None = Field(
        None,
        description="MAGIC's LM domain adaptation: captions are decoded by a copy of the shared LLM fine-tuned "
        "(SimCTG) on caption text, starting from start_text or else text_format.start_text; None = the shared LLM",
    )


def _no_image(r: Request) -> str | None:
    return "no image: MAGIC needs an image to score candidates against" if r.image is None else None


@register_paradigm
class Magic(Paradigm):
    family = "guided_decoding"
    variant = "magic"
    description = "MAGIC search: LM top-k re-ranked by fluency, degeneration penalty and image–text score"
    Options = MagicOptions
    uses = ("llm", "scorer")
    # tests: test_magic_batch_invariant_and_failures, test_magic_kv_cache_reuse_equals_recomputing_prefix
    speed_only = frozenset({"reuse_kv_cache", "decode_batch"})

    def __init__(self, backbones: Any, options: MagicOptions, generation: Any) -> None:
        super().__init__(backbones, options, generation)
        self._adapted: AdaptedLM | None = None
        self._plan: tuple[CaptionCorpus, str] | None = None
        self.train_result: Any = None  # set when adapting: reported by training_record()

    def fingerprint(self) -> dict[str, Any]:
        # adapt_lm is represented by its key (base LLM, captions' content, training options); left
        # out when unset so answers cached before the option existed stay valid.
        opts = {k: v for k, v in self.keyed_options().items() if k != "adapt_lm"}
        return {"paradigm": self.name, "options": opts, "lm_adapted": self.adaptation_key() or False}

    def adaptation_key(self) -> str | None:
        """The adapted LM's cache key (computed from the config and the captions; loads no model)."""
        o = self.options.adapt_lm
        if o is None:
            return None
        if self._plan is None:
            corpus = load_corpus(o)
            self._plan = (corpus, adaptation_key(base_llm_identity(self.backbones), corpus.digest, o))
        return self._plan[1]

    def prepare(self) -> None:
        o = self.options.adapt_lm
        if o is None or self._adapted is not None:
            return
        self.adaptation_key()
        assert self._plan is not None
        corpus, key = self._plan
        self._adapted = adapt_language_model(
            self.backbones.llm,
            corpus,
            o,
            Path(getattr(self.backbones, "cache_dir", None) or default_cache_dir()),
            base_identity=base_llm_identity(self.backbones),
            heldout=load_heldout(o),
            progress=self.progress,
        )
        assert self._adapted.key == key
        self.train_result = self._adapted.train_result()
        self.checkpoint_dir = self._adapted.directory

    def training_record(self) -> TrainingRecord | None:
        """The LM adaptation's training (MLflow logs it as a nested run), None without adaptation."""
        return None if self.train_result is None else TrainingRecord(self.train_result, self.checkpoint_dir)

    def _uses_adapted(self, r: Request) -> bool:
        """Only captions: the adapted copy was trained to write captions from its start text."""
        return self.options.adapt_lm is not None and r.kind == "caption"

    def _adaptation_trace(self, r: Request) -> dict[str, Any]:
        if self.options.adapt_lm is None:
            return {"used": False}
        if self._adapted is None or not self._uses_adapted(r):
            return {"used": False, "key": self.adaptation_key(),
                    "reason": f"the adapted LM answers captions only; this request is {r.kind}"}
        return self._adapted.trace()

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        if any(self._uses_adapted(r) for r in requests):
            self.prepare()
        answers: list[Answer | None] = [None] * len(requests)
        groups: dict[bool, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(self._uses_adapted(r), []).append(i)
        for group in groups.values():  # one LM per chunk
            got = answer_in_chunks([requests[i] for i in group], self.options.decode_batch, self._answer_chunk,
                                   refuse=_no_image)
            for i, a in zip(group, got):
                answers[i] = a
        return [a for a in answers if a is not None]

    def _answer_chunk(self, reqs: Sequence[Request]) -> list[Answer]:
        o = self.options
        t0 = time.perf_counter()
        adapted = self._uses_adapted(reqs[0])
        if any(self._uses_adapted(r) != adapted for r in reqs):
            raise ValueError("a decode chunk mixes requests for the adapted and the shared LM")
        if adapted:
            assert self._adapted is not None and o.adapt_lm is not None
            lm = self._adapted.llm
        else:
            lm = self.backbones.llm
        start_text = o.start_text if o.start_text is not None or not adapted else o.adapt_lm.text_format.start_text
        tok = lm.tokenizer
        scorer = self.backbones.scorer
        prompts = [
            PreparedPrompt(lm_prompt=start_text, answer_prefix="")
            if start_text is not None and r.kind == "caption"
            else build_prompt(lm, r, chat=o.chat, caption_prefix=o.caption_prefix)
            for r in reqs
        ]
        skip_special = not o.scorer_special_tokens
        images = ImageEmbeddings(scorer, reqs).stack([r.image_id for r in reqs])
        texts = TextEmbeddingMemo(scorer)
        scale = float(o.scorer_logit_scale or scorer.logit_scale)
        stop = tuple(self.generation.stop)

        def scorer_logits(rows: Sequence[int], gen: Sequence[list[int]], cands: torch.Tensor) -> torch.Tensor:
            strings = []
            for r, g, cs in zip(rows, gen, cands.tolist()):
                window = [(g + [c])[-o.scorer_window :] for c in cs]
                strings += [prompts[r].answer_prefix + s for s in tok.batch_decode(window, skip_special_tokens=skip_special)]
            emb = texts(strings).view(len(rows), cands.shape[1], -1)
            return scale * cosine_to_images(images[list(rows)], emb)

        def row_done(r: int, g: list[int]) -> bool:
            return cut_at_stop(tok.decode(g, skip_special_tokens=True), stop)[1]

        ids, mask = encode_left_padded(tok, [p.lm_prompt for p in prompts], lm.device)
        n_new = [o.max_new_tokens or r.max_new_tokens for r in reqs]
        res = magic_search(
            lm.model,
            ids,
            mask,
            k=o.k,
            alpha=o.alpha,
            beta=o.beta,
            max_new_tokens=max(n_new),
            scorer_logits=scorer_logits,
            stop_ids=eos_ids(lm),
            row_done=row_done,
            reuse_cache=o.reuse_kv_cache,
        )
        share = (time.perf_counter() - t0) / len(reqs)
        out = []
        for b, (r, p) in enumerate(zip(reqs, prompts)):
            gen = res.ids[b][: n_new[b]]
            body, _ = cut_at_stop(tok.decode(gen, skip_special_tokens=True), stop)
            text = (p.answer_prefix + body).strip()
            out.append(
                Answer(
                    text=text,
                    latency_s=share,
                    llm_tokens_in=int(mask[b].sum()),
                    llm_tokens_out=len(gen),
                    trainable_params=int(self._adapted.meta["trainable_params"]) if adapted and self._adapted else 0,
                    trace={
                        "lm_prompt": p.lm_prompt,
                        "answer_prefix": p.answer_prefix,
                        "scorer": getattr(scorer, "name", type(scorer).__name__),
                        "scorer_logit_scale": scale,
                        "lm_adaptation": self._adaptation_trace(r),
                        "steps": [
                            {**s, "text": tok.decode([s["token"]])} for s in res.steps[b][: n_new[b] + 1]
                        ],
                        "candidate_forwards_in_batch": res.candidate_forwards,
                        "texts_scored_in_batch": texts.texts_embedded,
                    },
                )
            )
        return out
