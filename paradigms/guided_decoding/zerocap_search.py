"""ZeroCap (Tewel et al., 2022): per token, gradient steps on the LM's key/value context.

For each next token the cached keys/values of the context are shifted by a delta that is
optimised for a few steps to lower

    scorer_CE(target over the top candidates ‖ p_shifted) + w · KL(p_shifted ‖ p_unshifted)

where the target is softmax(sim(I, prefix ⊕ v) / T) over the LM's top candidates v (a constant:
no gradient flows through the scorer). The shifted and unshifted next-token distributions are then
fused (p^f · p0^(1−f)) and fed to a length-normalised beam search; the beam the scorer likes best wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import DynamicCache

from paradigms.guided_decoding.common import positions_from_mask
from paradigms.guided_decoding.lm_step import head_logits, trunk_forward

#: (row ids, prefix token ids per row, candidate ids [n, c]) -> scorer cosine similarities [n, c]
CandidateSims = Callable[[Sequence[int], Sequence[list[int]], torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ZeroCapSettings:
    """The search's knobs; defaults are the published ones (see ``ZeroCapOptions``)."""

    beam: int = 5
    steps: int = 5
    step_size: float = 0.3
    fluency_weight: float = 0.2
    scorer_weight: float = 1.0
    fusion: float = 0.99
    top_candidates: int = 512
    temperature: float = 0.01
    grad_norm_power: float = 0.9
    end_factor: float = 1.01
    end_factor_from: int = 1
    first_step_end_factor: float = 1.6
    repetition_penalty: float = 1.0
    forbidden_factor: float = 20.0


@dataclass
class ShiftReport:
    """How the optimisation went for one token (for the trace and tests)."""

    losses: list[torch.Tensor] = field(default_factory=list)  # per step: loss of each row [n]


def _cache_from(kv: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    """A fresh cache over the given tensors (the forward appends to a cache; never reuse one)."""
    return DynamicCache(ddp_cache_data=[(k, v) for k, v in kv])


def shift_context(
    model: torch.nn.Module,
    kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
    mask: torch.Tensor,
    last_token: torch.Tensor,
    last_pos: torch.Tensor,
    logp_before: torch.Tensor,
    target_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    s: ZeroCapSettings,
    report: ShiftReport | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Optimise additive deltas on every layer's keys and values of the context (per row).

    ``mask`` covers context + last token; ``target_fn(probs)`` returns (candidate ids [n,c],
    target distribution [n,c]) as constants. Each row's gradient is normalised by its own norm
    (per tensor, to the power ``grad_norm_power``), as the authors do per beam.
    """
    deltas = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in kv]
    for _ in range(s.steps):
        cur = [(dk.clone().requires_grad_(True), dv.clone().requires_grad_(True)) for dk, dv in deltas]
        with torch.enable_grad():
            shifted = _cache_from([(k + dk, v + dv) for (k, v), (dk, dv) in zip(kv, cur)])
            h, _ = trunk_forward(model, last_token, mask, last_pos, shifted)
            logp = torch.log_softmax(head_logits(model, h[:, -1]), dim=-1)
            probs = logp.exp()
            cand, target = target_fn(probs.detach())
            scorer_loss = -(target * logp.gather(-1, cand)).sum(-1)
            fluency = s.fluency_weight * (probs * (logp - logp_before)).sum(-1)
            loss = s.scorer_weight * scorer_loss.sum() + fluency.sum()
            grads = torch.autograd.grad(loss, [t for pair in cur for t in pair])
        if report is not None:
            report.losses.append((s.scorer_weight * scorer_loss + fluency).detach())
        new = []
        for j, (dk, dv) in enumerate(deltas):
            pair = []
            for d, g in ((dk, grads[2 * j]), (dv, grads[2 * j + 1])):
                norm = g.flatten(1).norm(dim=1).add(1e-15).pow(s.grad_norm_power).view(-1, *[1] * (g.dim() - 1))
                pair.append(d - s.step_size * g / norm)
            new.append((pair[0], pair[1]))
        deltas = new
    return [(k + dk, v + dv) for (k, v), (dk, dv) in zip(kv, deltas)]


def adjust_special_logits(
    logits: torch.Tensor, step: int, end_id: int, context: torch.Tensor, forbidden: Sequence[int], s: ZeroCapSettings
) -> torch.Tensor:
    """The authors' logit edits: repetition penalty (last 4 tokens), end-token factor, forbidden tokens."""
    logits = logits.clone()

    def scale(rows: torch.Tensor, cols: torch.Tensor, f: float) -> None:
        v = logits[rows, cols]
        logits[rows, cols] = torch.where(v > 0, v / f, v * f)

    n = logits.shape[0]
    ar = torch.arange(n)
    if s.repetition_penalty != 1.0:
        for b in range(n):
            recent = torch.tensor(sorted(set(context[b, -4:].tolist())), dtype=torch.long)
            scale(torch.full_like(recent, b), recent, s.repetition_penalty)
    end = torch.full((n,), end_id, dtype=torch.long)
    if step >= s.end_factor_from:
        scale(ar, end, 1.0 / s.end_factor)  # multiply a positive end logit by the factor
    if step == 0:
        scale(ar, end, s.first_step_end_factor)
    for t in forbidden:
        scale(ar, torch.full((n,), t, dtype=torch.long), s.forbidden_factor)
    return logits


@dataclass
class ZeroCapOutput:
    """Per image: the beams' token ids (cut at their length) and length-normalised LM scores."""

    beams: list[list[list[int]]]
    beam_scores: list[list[float]]
    losses: list[list[float]] = field(default_factory=list)


@torch.no_grad()
def zerocap_search(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    candidate_sims: CandidateSims,
    end_ids: set[int],
    end_id: int,
    forbidden: Sequence[int] = (),
    settings: ZeroCapSettings = ZeroCapSettings(),
) -> ZeroCapOutput:
    """Beam search over context-shifted LM distributions, one image per prompt row (left-padded)."""
    s = settings
    n_img, beam = prompt_ids.shape[0], s.beam
    gen: list[list[list[int]]] = [[[]] for _ in range(n_img)]  # per image, per beam
    scores = torch.zeros(n_img, 1)
    lengths = torch.ones(n_img, 1)
    stopped = torch.zeros(n_img, 1, dtype=torch.bool)
    active = list(range(n_img))
    losses: list[list[float]] = [[] for _ in range(n_img)]
    for step in range(max_new_tokens):
        if not active:
            break
        nb = len(gen[active[0]])
        rows = [(i, b) for i in active for b in range(nb)]
        seqs = [prompt_ids[i][prompt_mask[i].bool()].tolist() + gen[i][b] for i, b in rows]
        width = max(len(x) for x in seqs)
        ids = torch.tensor([[0] * (width - len(x)) + x for x in seqs], dtype=torch.long)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in seqs], dtype=torch.long)
        pos = positions_from_mask(mask)
        _, cache = trunk_forward(model, ids[:, :-1], mask[:, :-1], pos[:, :-1], None)
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        last, last_pos = ids[:, -1:], pos[:, -1:]
        h0, _ = trunk_forward(model, last, mask, last_pos, _cache_from(kv))
        logp0 = torch.log_softmax(head_logits(model, h0[:, -1]), dim=-1)
        prefixes = [gen[i][b] for i, b in rows]
        row_img = [i for i, _ in rows]

        def target_fn(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            cand = probs.topk(min(s.top_candidates, probs.shape[-1]), dim=-1).indices
            sims = candidate_sims(row_img, prefixes, cand)
            return cand, torch.softmax(sims.float() / s.temperature, dim=-1)

        report = ShiftReport()
        kv_shift = shift_context(model, kv, mask, last, last_pos, logp0, target_fn, s, report)
        if report.losses:  # the last step's loss, averaged over the image's beams
            per_row = report.losses[-1]
            for i in active:
                losses[i].append(float(per_row[[j for j, r in enumerate(row_img) if r == i]].mean()))
        h, _ = trunk_forward(model, last, mask, last_pos, _cache_from(kv_shift))
        logits = adjust_special_logits(head_logits(model, h[:, -1]), step, end_id, ids, forbidden, s)
        p = torch.softmax(logits, dim=-1) ** s.fusion * logp0.exp() ** (1 - s.fusion)
        p = p.view(len(active), nb, -1)
        logp = (p / p.sum(dim=(1, 2), keepdim=True)).log()  # authors normalise over the image's beams
        a_idx = torch.tensor(active)
        sc, ln, st = scores[a_idx], lengths[a_idx], stopped[a_idx]
        V = logp.shape[-1]
        if step == 0:
            new_sc, tok = logp[:, 0].topk(beam, dim=-1)
            src = torch.zeros_like(tok)
            ln = torch.ones(len(active), beam)
            st = torch.zeros(len(active), beam, dtype=torch.bool)
        else:
            logp = logp.masked_fill(st[..., None], float("-inf"))
            logp[..., 0] = torch.where(st, torch.zeros_like(logp[..., 0]), logp[..., 0])
            ln = ln + (~st).float()
            avg = (sc[..., None] + logp) / ln[..., None]
            top, flat = avg.view(len(active), -1).topk(beam, dim=-1)
            src, tok = flat // V, flat % V
            ln = ln.gather(1, src)
            st = st.gather(1, src)
            new_sc = top * ln
        new_scores = torch.zeros(n_img, beam)
        new_lengths = torch.ones(n_img, beam)
        new_stopped = torch.ones(n_img, beam, dtype=torch.bool)
        new_scores[a_idx], new_lengths[a_idx] = new_sc, ln
        still: list[int] = []
        for j, i in enumerate(active):
            gen[i] = [gen[i][int(src[j, b])] + [int(tok[j, b])] for b in range(beam)]
            st_j = st[j] | torch.tensor([int(t) in end_ids or int(t) == end_id for t in tok[j].tolist()])
            new_stopped[i] = st_j
            if not bool(st_j.all()):
                still.append(i)
        for i in range(n_img):
            if i not in active:
                new_scores[i] = scores[i, 0] if scores.shape[1] == 1 else scores[i]
                new_lengths[i] = lengths[i, 0] if lengths.shape[1] == 1 else lengths[i]
        scores, lengths, stopped = new_scores, new_lengths, new_stopped
        active = still
    beams = [[g[: int(lengths[i, b])] for b, g in enumerate(gen[i])] for i in range(n_img)]
    norm = [[float(scores[i, b] / lengths[i, b]) for b in range(len(gen[i]))] for i in range(n_img)]
    return ZeroCapOutput(beams=beams, beam_scores=norm, losses=losses)
