"""``device_map: auto``: one model spread over every GPU a process sees, checked before any compute.

accelerate places a model's layers across the visible GPUs (and CPU memory when they are full), so a
model larger than one GPU (a 70B LLM, IDEFICS-80B) can run. Placement changes where a layer runs,
not what it computes, so it is kept out of config hashes and cache keys, like the number of processes.

It combines with data-parallel ranks only when each rank has GPUs of its own: one process per node
(``torchrun --nnodes N --nproc_per_node 1``), each spreading its copy over its node's GPUs. Several
processes on one GPU node would each spread a copy over the same GPUs, so that is refused.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Iterator

from harness.config import ConfigError


def placement_requests(plan: Any) -> Iterator[tuple[str, Any]]:
    """(config key, settings object) of every model the plan will load with ``device_map`` set."""
    llm = plan.config.models.llm
    if getattr(llm, "device_map", None) and any("llm" in p.cls.uses for p in plan.paradigms):
        yield "models.llm", llm
    for i, p in enumerate(plan.paradigms):
        if getattr(p.options, "device_map", None):
            yield f"paradigms[{i}].options", p.options


def placement_refusal(where: str, settings: Any, env: dict[str, str] | None = None, cuda: bool | None = None) -> str | None:
    """Why ``settings.device_map`` cannot be honoured here, or None."""
    env = dict(os.environ) if env is None else env
    if importlib.util.find_spec("accelerate") is None:
        return f"config key '{where}.device_map': 'auto' needs the accelerate package (pip install accelerate)"
    if getattr(settings, "device", "auto") != "auto":
        return (f"config key '{where}.device_map': 'auto' lets accelerate place the model, but '{where}.device' is "
                f"{settings.device!r}; set device: auto (or drop device_map)")
    if getattr(settings, "engine", "hf") == "static":
        return (f"config key '{where}.device_map': the static decode engine keeps one model on one device; "
                f"use engine: hf or auto with device_map")
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    world = int(env.get("WORLD_SIZE", "1"))
    local = int(env.get("LOCAL_WORLD_SIZE", "1"))
    if cuda and world > 1 and local > 1:
        return (f"config key '{where}.device_map': 'auto' spreads one copy of the model over every GPU this process "
                f"sees, but {local} processes of this job run on this node and would all spread theirs over the same "
                f"GPUs. Start one process per node (torchrun --nnodes N --nproc_per_node 1 ...): each rank then owns "
                f"its node's GPUs. Or drop device_map to run one model per GPU (docs/performance.md)")
    return None


def check_placement(plan: Any) -> None:
    """Raise :class:`ConfigError` for the first ``device_map`` this process cannot honour."""
    for where, settings in placement_requests(plan):
        why = placement_refusal(where, settings)
        if why:
            raise ConfigError(why)
