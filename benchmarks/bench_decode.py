"""Greedy decode speed: mmbench's static engine vs transformers' generate(), against the bandwidth bound.

One process, same random-initialised model, same prompts:

* ``generate()`` (dynamic cache) — the baseline;
* optionally ``generate(cache_implementation="static")`` (transformers compiles its decode step);
* mmbench's ``StaticDecoder`` (static KV cache; CUDA-graph decode loop on a GPU).

Decode steps/s are measured as (tokens after the first) / (time after the first token), the first
token's time being the prefill (measured separately per engine). The memory-bandwidth bound is
bytes of weights read per step (every matrix a step multiplies by; the embedding lookup reads one row)
divided by the device's bandwidth measured here by a large copy. Token agreement with the baseline
is reported per row (bf16 rounding can flip near-ties; the baseline's own batch-1 vs batched
agreement is reported beside it as the control).

    python benchmarks/bench_decode.py --dry-run                 # tiny model on CPU, seconds
    python benchmarks/bench_decode.py --size smollm2-135m       # CPU, random weights of that shape
    python benchmarks/bench_decode.py --device cuda --size llama-1b --hf-static   # the H100 numbers

Writes ``benchmarks/results/decode_<device>.json`` (not for --dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.models.decode_engine import StaticDecoder  # noqa: E402

# Llama-style shapes. llama-1b: 1.17B parameters (hidden 2048, 16 layers, GQA 32/8, MLP 8192, 32k
# vocab, untied), the size the performance issue's baseline was measured on.
SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=False),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(size: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(max_position_embeddings=4096, **SIZES[size])
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.generation_config.eos_token_id = None  # random weights: decode the full length every time
    return model


def weight_bytes_per_step(model: torch.nn.Module) -> int:
    """Bytes of parameters a decode step reads: everything but the embedding table (one row)."""
    emb = model.get_input_embeddings().weight
    total = 0
    for p in model.parameters():
        if p is emb and not model.config.tie_word_embeddings:
            continue  # untied input table: one row per token
        total += p.numel() * p.element_size()
    return total


def measure_bandwidth(device: str) -> float | None:
    """Device memory bandwidth in bytes/s from a 1 GiB device-to-device copy (read + write)."""
    if not device.startswith("cuda"):
        return None
    n = 1 << 29  # 2-byte elements: 1 GiB
    a = torch.empty(n, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    _sync(device)
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    _sync(device)
    return 2 * a.numel() * a.element_size() * reps / (time.perf_counter() - t)


def _timed(fn, device: str) -> tuple[object, float]:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t


def run_hf(model, ids, att, n, device, **extra):
    kw = dict(do_sample=False, pad_token_id=0, temperature=None, top_p=None, top_k=None)
    fn_first = lambda: model.generate(input_ids=ids, attention_mask=att, max_new_tokens=1, **kw, **extra)  # noqa: E731
    fn_all = lambda: model.generate(input_ids=ids, attention_mask=att, max_new_tokens=n, min_new_tokens=n, **kw, **extra)  # noqa: E731
    return fn_first, fn_all


def steps_per_s(fn_first, fn_all, device: str, n: int, repeats: int) -> tuple[torch.Tensor, float, float]:
    """Median decode steps/s over ``repeats`` runs (after a warm-up run of each)."""
    fn_first()
    out, _ = _timed(fn_all, device)
    rates, prefill = [], []
    for _ in range(repeats):
        _, t1 = _timed(fn_first, device)
        out, tn = _timed(fn_all, device)
        prefill.append(t1)
        rates.append((n - 1) / max(tn - t1, 1e-9))
    rates.sort()
    return out, rates[len(rates) // 2], sorted(prefill)[len(prefill) // 2]


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, object]:
    a, b = a.cpu(), b.cpu()
    same_rows = int((a == b).all(dim=1).sum())
    diverge = [int((ra != rb).nonzero()[0]) for ra, rb in zip(a, b) if not torch.equal(ra, rb)]
    return {"identical_rows": f"{same_rows}/{a.shape[0]}", "first_divergence_steps": diverge[:8],
            "token_agreement": float((a == b).float().mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", default="smollm2-135m", choices=sorted(SIZES))
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-static", action="store_true", help="also time generate(cache_implementation='static')")
    ap.add_argument("--no-graphs", action="store_true", help="engine without CUDA graphs (isolates their effect)")
    ap.add_argument("--dry-run", action="store_true", help="tiny model, few tokens, CPU: checks the script")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if args.dry_run:
        args.size, args.new_tokens, args.repeats, args.batches = "tiny", 12, 1, "1,4"
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    model = build(args.size, args.device, dtype)
    params = sum(p.numel() for p in model.parameters())
    step_bytes = weight_bytes_per_step(model)
    bandwidth = measure_bandwidth(args.device)
    bound = bandwidth / step_bytes if bandwidth else None
    engine = StaticDecoder(model, [], 0, use_cuda_graphs=False if args.no_graphs else None)
    batches = [int(x) for x in args.batches.split(",")]
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(10, model.config.vocab_size, (max(batches), args.prompt_tokens), generator=g)
    n = args.new_tokens
    rows = []
    baseline_b1: torch.Tensor | None = None
    for bs in batches:
        ids = prompts[:bs].clone().to(args.device)  # the same prompts, so row 0 is comparable across batches
        att = torch.ones_like(ids)
        ids[1:, :4] = 0  # some left padding, as real batches have
        att[1:, :4] = 0
        hf_out, hf_rate, hf_prefill = steps_per_s(*run_hf(model, ids, att, n, args.device), args.device, n, args.repeats)
        hf_new = hf_out[:, ids.shape[1]:]
        eng_first = lambda: engine.generate(ids, att, 1)  # noqa: E731
        eng_all = lambda: engine.generate(ids, att, n)  # noqa: E731
        warm = time.perf_counter()
        eng_first(); eng_all()  # noqa: E702  (captures the CUDA graphs for this shape)
        warm = time.perf_counter() - warm
        eng_new, eng_rate, eng_prefill = steps_per_s(eng_first, eng_all, args.device, n, args.repeats)
        row = {
            "batch": bs,
            "generate_steps_per_s": hf_rate,
            "generate_tokens_per_s": hf_rate * bs,
            "engine_steps_per_s": eng_rate,
            "engine_tokens_per_s": eng_rate * bs,
            "engine_vs_generate": eng_rate / hf_rate,
            "engine_warmup_s": warm,
            "prefill_s": {"generate": hf_prefill, "engine": eng_prefill},
            "engine_vs_generate_tokens": agreement(eng_new, hf_new),
        }
        if bound:
            row["generate_fraction_of_bound"] = hf_rate / bound
            row["engine_fraction_of_bound"] = eng_rate / bound
        if bs == 1:
            baseline_b1 = hf_new
        elif baseline_b1 is not None:
            # Control: generate() on row 0 alone vs inside this batch (row 0 is unpadded in both).
            row["generate_batch_vs_single_row0"] = agreement(hf_new[:1], baseline_b1[:1])
        if args.hf_static:
            fns = run_hf(model, ids, att, n, args.device, cache_implementation="static")
            warm = time.perf_counter()
            fns[1]()
            warm = time.perf_counter() - warm
            st_out, st_rate, _ = steps_per_s(*fns, args.device, n, args.repeats)
            row["hf_static_steps_per_s"] = st_rate
            row["hf_static_warmup_s"] = warm
            row["engine_vs_hf_static"] = eng_rate / st_rate
            if bound:
                row["hf_static_fraction_of_bound"] = st_rate / bound
        rows.append(row)
        print(json.dumps(row), flush=True)
    import transformers

    hardware = {"python": platform.python_version(), "platform": platform.platform(),
                "cpu_count": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__}
    if args.device.startswith("cuda"):
        hardware["gpu"] = torch.cuda.get_device_name(0)
    else:
        hardware["torch_threads"] = torch.get_num_threads()
    result = {
        "benchmark": "greedy_decode_engine_vs_generate",
        "model": f"random-init Llama-style {args.size}",
        "params": params,
        "dtype": str(dtype).replace("torch.", ""),
        "device": args.device,
        "cuda_graphs": engine.use_cuda_graphs,
        "hardware": hardware,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": n,
        "weight_bytes_per_step": step_bytes,
        "measured_bandwidth_bytes_per_s": bandwidth,
        "bandwidth_bound_steps_per_s": bound,
        "rows": rows,
        "dry_run": args.dry_run,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if not args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"decode_{args.device.split(':')[0]}_{args.size}.json"
        (args.out / name).write_text(json.dumps(result, indent=1) + "\n")
        print("wrote", args.out / name)


if __name__ == "__main__":
    main()
