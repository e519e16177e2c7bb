"""The ``guided_decoding/zerocap`` paradigm: ZeroCap's context-shifting beam search."""

from __future__ import annotations

import time
from typing import Sequence

import torch
from pydantic import Field

from harness.chunking import answer_in_chunks
from harness.config import Strict
from harness.interface import Answer, Paradigm, Request
from harness.models.llm import cut_at_stop
from harness.registry import register_paradigm
from paradigms.guided_decoding.common import (
    ImageEmbeddings,
    PreparedPrompt,
    TextEmbeddingMemo,
    build_prompt,
    cosine_to_images,
    encode_left_padded,
    eos_ids,
)
from paradigms.guided_decoding.zerocap_search import ZeroCapSettings, zerocap_search


class ZeroCapOptions(Strict):
    """Published ZeroCap settings by default; lower ``beam``/``steps``/``top_candidates`` for CPU."""

    beam: int = Field(5, ge=1)
    steps: int = Field(5, ge=0, description="gradient steps on the context per token")
    step_size: float = Field(0.3, gt=0)
    fluency_weight: float = Field(0.2, ge=0, description="weight of KL(shifted ‖ unshifted)")
    fusion: float = Field(0.99, ge=0, le=1, description="p_shifted^f · p_unshifted^(1−f)")
    top_candidates: int = Field(512, ge=1, description="candidates scored by the scorer per step")
    temperature: float = Field(0.01, gt=0, description="scorer temperature of the target distribution")
    end_factor: float = Field(1.01, gt=0)
    grad_norm_power: float = Field(0.9, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    max_new_tokens: int | None = Field(
        None, ge=1, description="None: 15 for captions (published target length), the request's otherwise"
    )
    prompt_prefix: str = Field("Image of a", description="the caption's first words (published: 'Image of a')")
    keep_prefix_in_caption: bool = Field(True, description="return 'Image of a …' as the authors print it")
    forbidden_words: tuple[str, ...] = Field((), description="words whose first token is damped by forbidden_factor")
    forbidden_token_ids: tuple[int, ...] = Field(
        (), description="LM token ids damped by forbidden_factor (the authors: their forbidden_tokens.npy, GPT-2 ids)"
    )
    forbidden_factor: float = Field(20.0, gt=0)
    scorer_weight: float = Field(1.0, ge=0, description="weight of the scorer cross-entropy (authors' clip_scale)")
    chat: bool = Field(True, description="wrap the task prompt in the LLM's chat template")
    start_text: str | None = Field(
        None,
        description="captions only: the LM prompt is exactly start_text + prompt_prefix (the authors: GPT-2's "
        "'<|endoftext|>' then 'Image of a'); task prompt and chat template unused",
    )
    stop_at_eos: bool = Field(
        True, description="False: only the end token '.' ends a beam and EOS is an ordinary token (the authors' code)"
    )
    scorer_special_tokens: bool = Field(
        False,
        description="the scorer reads special tokens of candidates and finished beams as text (the authors: an "
        "end-of-text candidate is scored as '<|endoftext|>'); False drops them",
    )
    decode_batch: int = Field(4, ge=1, description="images decoded together (memory; never changes answers)")


def _no_image(r: Request) -> str | None:
    return "no image: ZeroCap needs an image to score candidates against" if r.image is None else None


@register_paradigm
class ZeroCap(Paradigm):
    family = "guided_decoding"
    variant = "zerocap"
    description = "ZeroCap: per-token gradient shifts of the LM's key/value context toward the scorer"
    Options = ZeroCapOptions
    uses = ("llm", "scorer")
    speed_only = frozenset({"decode_batch"})  # test: test_zerocap_batch_invariant_caption_and_vqa

    def _settings(self) -> ZeroCapSettings:
        o = self.options
        return ZeroCapSettings(
            beam=o.beam,
            steps=o.steps,
            step_size=o.step_size,
            fluency_weight=o.fluency_weight,
            fusion=o.fusion,
            top_candidates=o.top_candidates,
            temperature=o.temperature,
            grad_norm_power=o.grad_norm_power,
            end_factor=o.end_factor,
            repetition_penalty=o.repetition_penalty,
            forbidden_factor=o.forbidden_factor,
            scorer_weight=o.scorer_weight,
        )

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        return answer_in_chunks(requests, self.options.decode_batch, self._answer_chunk, refuse=_no_image)

    def _answer_chunk(self, reqs: Sequence[Request]) -> list[Answer]:
        o = self.options
        t0 = time.perf_counter()
        lm = self.backbones.llm
        tok = lm.tokenizer
        scorer = self.backbones.scorer
        prompts = [
            PreparedPrompt(lm_prompt=o.start_text + o.prompt_prefix, answer_prefix=o.prompt_prefix)
            if o.start_text is not None and r.kind == "caption"
            else build_prompt(lm, r, chat=o.chat, caption_prefix=o.prompt_prefix)
            for r in reqs
        ]
        skip_special = not o.scorer_special_tokens
        images = ImageEmbeddings(scorer, reqs)
        img = images.stack([r.image_id for r in reqs])
        texts = TextEmbeddingMemo(scorer)

        def candidate_sims(row_img: Sequence[int], prefixes: Sequence[list[int]], cand: torch.Tensor) -> torch.Tensor:
            # the prefix without special tokens (authors: their decode minus the BOS text), candidates as configured
            heads = tok.batch_decode(list(prefixes), skip_special_tokens=True)
            strings = []
            for i, head, cs in zip(row_img, heads, cand.tolist()):
                tails = tok.batch_decode([[c] for c in cs], skip_special_tokens=skip_special)
                strings += [prompts[i].answer_prefix + head + t for t in tails]
            emb = texts(strings).view(len(row_img), cand.shape[1], -1)
            return cosine_to_images(img[list(row_img)], emb)

        ids, mask = encode_left_padded(tok, [p.lm_prompt for p in prompts], lm.device)
        n_new = [o.max_new_tokens or (15 if r.kind == "caption" else r.max_new_tokens) for r in reqs]
        end_id = tok(".", add_special_tokens=False).input_ids[0]
        forbidden = [t for w in o.forbidden_words for t in tok(w, add_special_tokens=False).input_ids[:1]]
        forbidden += list(o.forbidden_token_ids)
        res = zerocap_search(
            lm.model,
            ids,
            mask,
            max_new_tokens=max(n_new),
            candidate_sims=candidate_sims,
            end_ids=eos_ids(lm) if o.stop_at_eos else set(),
            end_id=end_id,
            forbidden=forbidden,
            settings=self._settings(),
        )
        stop = tuple(self.generation.stop)
        share = (time.perf_counter() - t0) / len(reqs)
        out = []
        for b, (r, p) in enumerate(zip(reqs, prompts)):
            gens = [g[: n_new[b]] for g in res.beams[b]]
            beams = [cut_at_stop(tok.decode(g, skip_special_tokens=True), stop)[0] for g in gens]
            scored = beams if skip_special else [cut_at_stop(tok.decode(g), stop)[0] for g in gens]
            # The winner is the beam the scorer prefers (authors: CLIP over the continuations, prompt excluded).
            sims = cosine_to_images(img[b : b + 1], texts(scored)[None])[0]
            best = int(sims.argmax())
            keep = p.answer_prefix if (o.keep_prefix_in_caption or r.kind != "caption") else ""
            out.append(
                Answer(
                    text=(keep + beams[best]).strip(),
                    latency_s=share,
                    llm_tokens_in=int(mask[b].sum()),
                    llm_tokens_out=len(res.beams[b][best]),
                    trace={
                        "lm_prompt": p.lm_prompt,
                        "answer_prefix": p.answer_prefix,
                        "scorer": getattr(scorer, "name", type(scorer).__name__),
                        "beams": beams,
                        "beam_ids": gens,
                        "beam_lm_scores": [round(x, 6) for x in res.beam_scores[b]],
                        "beam_scorer_sims": [round(float(x), 4) for x in sims],
                        "chosen_beam": best,
                        "shift_loss_per_token": [round(x, 4) for x in res.losses[b]],
                        "texts_scored_in_batch": texts.texts_embedded,
                    },
                )
            )
        return out
