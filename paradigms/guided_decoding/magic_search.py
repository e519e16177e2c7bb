"""MAGIC search (Su et al., 2022): contrastive search plus an image–text term, batched over images.

At each step the LM proposes its top-k tokens v and the pick is

    argmax_v (1−α)·p(v|x<t) − α·max_j cos(h_v, h_xj) + β·softmax_k(s·sim(I, x<t ⊕ v))

where h are last-layer hidden states (the prompt's included), s the scorer's logit scale.
The k candidates are run in *one* forward on top of the cached prefix (cache repeated k times for
that step, then cut back to the chosen row), as the authors' implementation does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from paradigms.guided_decoding.common import positions_from_mask
from paradigms.guided_decoding.lm_step import head_logits, trunk_forward

#: (rows still decoding, their generated ids, candidate ids [n, k]) -> scorer logits [n, k]
ScorerLogits = Callable[[Sequence[int], Sequence[list[int]], torch.Tensor], torch.Tensor]
#: (row, its generated ids) -> whether the answer is complete (stop string seen)
RowDone = Callable[[int, list[int]], bool]


def magic_rank(
    top_probs: torch.Tensor,
    context_hidden: torch.Tensor,
    context_mask: torch.Tensor,
    cand_hidden: torch.Tensor,
    scorer_logits: torch.Tensor,
    alpha: float,
    beta: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MAGIC's score of each of k candidates per row; returns the argmax index [n] and the terms.

    top_probs [n,k]; context_hidden [n,S,H] with context_mask [n,S] (False = padding, ignored);
    cand_hidden [n,k,H]; scorer_logits [n,k] (already multiplied by the logit scale).
    """
    ctx = F.normalize(context_hidden.float(), dim=-1)
    cand = F.normalize(cand_hidden.float(), dim=-1)
    cos = torch.einsum("nkh,nsh->nks", cand, ctx)
    cos = cos.masked_fill(~context_mask.bool()[:, None, :], float("-inf"))
    penalty = cos.max(dim=-1).values
    visual = torch.softmax(scorer_logits.float(), dim=-1)
    score = (1.0 - alpha) * top_probs.float() - alpha * penalty + beta * visual
    return score.argmax(dim=-1), {"penalty": penalty, "visual": visual, "score": score}


@dataclass
class MagicOutput:
    """Generated ids per row and, per row, one audit record per step."""

    ids: list[list[int]]
    steps: list[list[dict[str, float | int]]] = field(default_factory=list)
    candidate_forwards: int = 0


@torch.no_grad()
def magic_search(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    k: int,
    alpha: float,
    beta: float,
    max_new_tokens: int,
    scorer_logits: ScorerLogits,
    stop_ids: set[int],
    row_done: RowDone | None = None,
    reuse_cache: bool = True,
) -> MagicOutput:
    """Decode every (left-padded) row with MAGIC; rows leave the batch once they hit EOS or a stop.

    ``reuse_cache=False`` recomputes the whole prefix for every candidate (the naive way; same
    choices, used to check the cached path and to measure what the cache saves).
    """
    n_rows = input_ids.shape[0]
    mask = attention_mask.bool()
    pos = positions_from_mask(attention_mask)
    hidden, cache = trunk_forward(model, input_ids, attention_mask, pos, None, use_cache=reuse_cache)
    ctx_h = hidden.float()
    logits = head_logits(model, hidden[:, -1])
    seq = input_ids.clone()
    last_pos = pos[:, -1].clone()
    rows = list(range(n_rows))
    out = MagicOutput(ids=[[] for _ in range(n_rows)], steps=[[] for _ in range(n_rows)])
    for _ in range(max_new_tokens):
        if not rows:
            break
        n = len(rows)
        probs = torch.softmax(logits, dim=-1)
        top_p, top_ids = probs.topk(k, dim=-1)
        kk = top_ids.shape[1]
        cand_mask = torch.cat([mask.repeat_interleave(kk, 0), mask.new_ones(n * kk, 1)], dim=1)
        if reuse_cache:
            cache.batch_repeat_interleave(kk)
            cand_pos = (last_pos + 1).repeat_interleave(kk)[:, None]
            cand_h, cache = trunk_forward(model, top_ids.reshape(-1, 1), cand_mask.long(), cand_pos, cache)
            cand_h = cand_h[:, -1]
        else:
            full = torch.cat([seq.repeat_interleave(kk, 0), top_ids.reshape(-1, 1)], dim=1)
            h, _ = trunk_forward(model, full, cand_mask.long(), positions_from_mask(cand_mask), None, use_cache=False)
            cand_h = h[:, -1]
        out.candidate_forwards += n * kk
        cand_h = cand_h.view(n, kk, -1)
        s_logits = scorer_logits(rows, [out.ids[r] for r in rows], top_ids)
        sel, terms = magic_rank(top_p, ctx_h, mask, cand_h, s_logits, alpha, beta)
        ar = torch.arange(n)
        chosen = top_ids[ar, sel]
        if reuse_cache:
            cache.batch_select_indices(ar * kk + sel)
        h_sel = cand_h[ar, sel]
        ctx_h = torch.cat([ctx_h, h_sel.float()[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
        seq = torch.cat([seq, chosen[:, None]], dim=1)
        last_pos = last_pos + 1
        logits = head_logits(model, h_sel)
        keep: list[int] = []
        for i, r in enumerate(rows):
            tok = int(chosen[i])
            j = int(sel[i])
            out.steps[r].append(
                {
                    "token": tok,
                    "lm_rank": j,
                    "p": round(float(top_p[i, j]), 5),
                    "penalty": round(float(terms["penalty"][i, j]), 5),
                    "visual": round(float(terms["visual"][i, j]), 5),
                }
            )
            if tok in stop_ids:
                continue
            out.ids[r].append(tok)
            if row_done is not None and row_done(r, out.ids[r]):
                continue
            keep.append(i)
        if len(keep) < n:
            idx = torch.tensor(keep, dtype=torch.long)
            if reuse_cache and keep:
                cache.batch_select_indices(idx)
            ctx_h, mask, seq, last_pos, logits = ctx_h[idx], mask[idx], seq[idx], last_pos[idx], logits[idx]
            rows = [rows[i] for i in keep]
    return out
