"""Thin access to a causal LM's trunk and head, so a decoder can pick among candidates *before*
paying for the vocabulary projection (only the chosen candidate's logits are ever needed)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache


def trunk_forward(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: DynamicCache | None,
    *,
    use_cache: bool = True,
) -> tuple[torch.Tensor, DynamicCache | None]:
    """Last-layer hidden states (after the final norm, what GPT-2's ``hidden_states[-1]`` is) and cache."""
    out = model.get_decoder()(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=use_cache,
    )
    return out.last_hidden_state, out.cache


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Vocabulary logits of hidden states, with the model's final soft-capping if it has one."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
