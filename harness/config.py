"""Run configuration: YAML suites validated before any model is touched.

Every section is a pydantic model with ``extra="forbid"`` so a typo'd key stops the run with the
key's name and the valid keys. Paradigm and task names, and each paradigm's options (its strict
``Options`` model), are checked against their registries when the run is planned (``plan_run``),
still before any model loads; model sources and kinds are closed sets here (model names are
checked when the model loads). The run's identity is a hash of the resolved config minus the
settings that cannot change an answer (where results and tracking go, batch sizes, progress display).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from harness.experts import ExpertSpec


class Strict(BaseModel):
    """Base of every config and option model: an unknown key is an error, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration problem, reported before any compute."""


class LLMSource(Strict):
    source: Literal["packaged", "hub", "local"] = "packaged"
    name: str = "smollm2-135m-instruct"
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    # Greedy decoding engine: "static" = static KV cache + CUDA-graph decode loop (harness/models/
    # decode_engine.py; Llama family), "hf" = transformers' generate(), "auto" = static on CUDA when
    # the architecture is supported, else hf.
    engine: Literal["auto", "hf", "static"] = "auto"
    # "auto": accelerate spreads the model over every GPU this process sees (models larger than one GPU);
    # checked against the process layout before compute (harness/placement.py). Placement only: not in
    # the config hash or cache keys.
    device_map: Literal["auto"] | None = None


class ServedPrice(Strict):
    """US dollars (or any one currency) per million tokens; turns token usage into money per sample."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class ServedLLMSource(Strict):
    """An LLM behind an OpenAI-compatible HTTP endpoint (vLLM, SGLang, TGI, Ollama, OpenAI, transformers serve).

    The key itself never appears here: ``api_key_env`` names the environment variable holding it.
    ``tokenizer`` is a local copy of the served model's tokenizer (same forms as the in-process
    ``source``/``name``): it applies the chat template and counts tokens exactly as the in-process
    path does; without it the chat API applies the server's template and token counts are the
    server's ``usage`` (budgets that need a count before a call then refuse to run).
    ``logprobs``: ``endpoint`` asks the server for them and stops with an error where it does not
    return them; ``local`` scores with the in-process copy named by ``tokenizer`` (a labelled
    fallback: same weights, computed here).
    """

    source: Literal["openai"]
    base_url: str
    model: str
    api: Literal["chat", "completions"] = "completions"
    api_key_env: str | None = None
    max_concurrency: int = Field(8, ge=1, le=1024)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(5, ge=0, le=50)
    tokenizer: "LLMSource | None" = None
    logprobs: Literal["endpoint", "local"] = "endpoint"
    chat_prefill: bool = False  # chat API: continue a partial assistant turn (vLLM/SGLang continue_final_message)
    price: ServedPrice | None = None

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        from urllib.parse import urlsplit

        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        parts = urlsplit(v)
        if parts.username or parts.password or parts.query:
            # Configs are logged (MLflow config.yaml, results): a secret in the URL would be too.
            raise ValueError("base_url must not carry credentials or a query; name the key's environment "
                             "variable in api_key_env")
        return v.rstrip("/")

    #: Settings that change how fast or where answers come, or what they cost, never what they are.
    NOT_IDENTITY: ClassVar[tuple[str, ...]] = ("base_url", "api_key_env", "max_concurrency", "timeout_s",
                                               "max_retries", "price")


class ScorerSource(Strict):
    # hf_clip: transformers' CLIPModel; ``model`` is a hub id (e.g. openai/clip-vit-base-patch32) or folder
    kind: Literal["tag-minilm", "open_clip", "hf_clip"] = "tag-minilm"
    model: str = "ViT-B-32"
    pretrained: str = "openai"


class TextEmbedderSource(Strict):
    source: Literal["packaged", "hub", "local"] = "packaged"
    name: str = "all-MiniLM-L6-v2"


class VisionEncoderSource(Strict):
    kind: Literal["efficientnet-lite0", "timm"] = "efficientnet-lite0"
    name: str = ""


def _llm_kind(v: Any) -> str:
    source = v.get("source") if isinstance(v, dict) else getattr(v, "source", None)
    return "served" if source == "openai" else "in_process"


#: ``models.llm``: in-process (packaged/hub/local) unless ``source: openai``; existing configs keep their hash.
AnyLLMSource = Annotated[
    Union[Annotated[LLMSource, Tag("in_process")], Annotated[ServedLLMSource, Tag("served")]],
    Discriminator(_llm_kind),
]


_LLM_TAGS: dict[Any, type[BaseModel]] = {"in_process": LLMSource, "served": ServedLLMSource}


class ModelsConfig(Strict):
    llm: AnyLLMSource = LLMSource()
    scorer: ScorerSource = ScorerSource()
    text_embedder: TextEmbedderSource = TextEmbedderSource()
    vision_encoder: VisionEncoderSource = VisionEncoderSource()
    # Vision experts shared by the tool agents (as tools) and text conversion (as converters);
    # see harness/experts. Empty: the packaged offline tools only.
    experts: tuple[ExpertSpec, ...] = ()

    @field_validator("experts")
    @classmethod
    def _unique_expert_names(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        from harness.experts import check_names

        check_names(v)
        return v


class GenerationConfig(Strict):
    max_new_tokens: int = Field(16, ge=1, le=4096)
    stop: tuple[str, ...] = ("\n",)
    greedy: bool = True
    temperature: float = Field(1.0, gt=0)


class ParadigmSpec(Strict):
    """One paradigm variant to run: ``name`` is ``family/variant``; ``options`` its typed settings."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @property
    def family(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def display(self) -> str:
        return self.label or self.name


class TaskRef(Strict):
    """A task from the task registry, optionally with dataset options overridden (e.g. a local root)."""

    name: str
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)
    shots: tuple[int, ...] | None = None  # overrides in_context.shots for this task
    support_options: dict[str, Any] = Field(default_factory=dict)  # options of a task's separate support dataset

    @field_validator("shots")
    @classmethod
    def _nonneg(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and any(s < 0 for s in v):
            raise ValueError("shot counts must be >= 0")
        return tuple(sorted(set(v))) if v is not None else None


class InContextConfig(Strict):
    shots: tuple[int, ...] = (0,)
    strategy: Literal["random", "rices", "rices_qi"] = "random"  # see tasks/shots.py
    trials: int = Field(1, ge=1)

    @field_validator("shots")
    @classmethod
    def _nonneg(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 0 for s in v):
            raise ValueError("shot counts must be >= 0")
        return tuple(sorted(set(v)))


class TrackingConfig(Strict):
    uri: str | None = None  # default: sqlite under results_dir
    experiment: str = "mmbench"


class RunConfig(Strict):
    name: str = "default"
    seed: int = 0
    paradigms: tuple[ParadigmSpec, ...]
    tasks: tuple[TaskRef, ...]
    limit: int | None = Field(None, ge=1)
    in_context: InContextConfig = InContextConfig()
    models: ModelsConfig = ModelsConfig()
    generation: GenerationConfig = GenerationConfig()
    batch_size: int = Field(8, ge=1)
    bootstrap: int = Field(500, ge=0)
    clipscore: bool = True  # CLIPScore/RefCLIPScore on caption tasks with the configured scorer
    results_dir: str = "results"
    tracking: TrackingConfig = TrackingConfig()

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        """What determines the numbers (excludes where outputs go and how fast they come)."""
        d = self.model_dump(mode="json")
        for k in ("results_dir", "tracking", "batch_size", "name"):
            d.pop(k, None)
        d.get("models", {}).get("llm", {}).pop("device_map", None)  # where layers run, not what they compute
        if d.get("models", {}).get("llm", {}).get("engine") == "auto":
            d["models"]["llm"].pop("engine")  # the default: keeps hashes of older configs unchanged
        if d.get("models", {}).get("llm", {}).get("source") == "openai":
            for k in ServedLLMSource.NOT_IDENTITY:
                d["models"]["llm"].pop(k, None)
        for p in d.get("paradigms", []):
            p.get("options", {}).pop("device_map", None)  # placement of a paradigm's own model (VLMs)
        for t in d.get("tasks", []):
            if not t.get("support_options"):
                t.pop("support_options", None)  # added later: older configs keep their hash
        if not d.get("models", {}).get("experts", True):
            d["models"].pop("experts")  # none configured: older configs keep their hashes
        return d

    def config_hash(self) -> str:
        return stable_hash(self.identity())


def stable_hash(obj: Any, n: int = 16) -> str:
    """SHA-256 of canonical JSON: same content -> same hash on every machine and Python."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def _reject_nan(obj: Any, path: str = "") -> None:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        raise ConfigError(f"config key '{path}' is {obj}; numbers must be finite")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _reject_nan(v, f"{path}.{k}" if path else str(k))
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            _reject_nan(v, f"{path}[{i}]")


def format_validation_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """Turn pydantic's error into one line per problem naming the key (and valid keys)."""
    lines = []
    for err in exc.errors():
        # The tag of a tagged union (models.llm: in_process | served) names no config key.
        where = tuple(p for p in err["loc"] if p not in _LLM_TAGS)
        loc = ".".join(str(p) for p in where)
        if err["type"] == "extra_forbidden":
            tag = next((_LLM_TAGS[p] for p in err["loc"] if p in _LLM_TAGS), None)
            valid = sorted(tag.model_fields) if tag else _valid_keys_at(model, where[:-1]) if model else []
            hint = f" (valid keys: {', '.join(valid)})" if valid else ""
            lines.append(f"unknown config key '{loc}'{hint}")
        else:
            lines.append(f"config key '{loc}': {err['msg']}")
    return "\n".join(lines)


def _valid_keys_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    cur: Any = model
    for part in loc:
        if isinstance(part, int) or cur is None:
            continue
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cur = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return sorted(getattr(cur, "model_fields", {}).keys()) if cur is not None else []


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML suite; ``overrides`` (from the CLI) replace top-level keys."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); "
                          f"save it as UTF-8") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at top level")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_config(raw)


def _warn_remote_code(obj: Any, path: str = "") -> None:
    """``trust_remote_code: true`` anywhere runs code downloaded with a model: say so up front."""
    import warnings

    if isinstance(obj, dict):
        for k, v in obj.items():
            where = f"{path}.{k}" if path else str(k)
            if k == "trust_remote_code" and v is True:
                warnings.warn(
                    f"config key '{where}' is true: Python code shipped with the model will be run "
                    "on this machine; use it only for repositories you trust (and pin a revision)",
                    UserWarning,
                    stacklevel=3,
                )
            else:
                _warn_remote_code(v, where)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _warn_remote_code(v, f"{path}[{i}]")


def parse_config(raw: dict[str, Any]) -> RunConfig:
    _reject_nan(raw)
    _warn_remote_code(raw)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, RunConfig)) from None


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def default_config_path() -> Path:
    return repo_root() / "configs" / "default.yaml"
