"""Batched vs one-by-one LLM generation through mmbench's LanguageModel, in one process.

Reports tokens/second for both and their ratio, checks the answers are identical, and writes
``benchmarks/results/llm_<device>.json`` with the hardware named.

    python benchmarks/bench_llm.py                     # packaged SmolLM2-135M, CPU
    python benchmarks/bench_llm.py --dry-run           # tiny random model, seconds
    python benchmarks/bench_llm.py --model /path/to/hf_folder --device cuda --batch 32
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from harness.models.llm import GenerationSettings, LanguageModel, _convert_packaged, default_cache_dir
from harness.tracking import hardware

QUESTIONS = [
    "What colour is the sky on a clear day?", "Name an animal that lives in the sea.",
    "What is two plus three?", "Describe a cat in a few words.", "What do people use umbrellas for?",
    "Which season comes after winter?", "What is the capital of Italy?", "Name a fruit that is yellow.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="local HF folder (default: packaged SmolLM2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--dry-run", action="store_true", help="tiny random model, 4 prompts")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    smol = _convert_packaged("smollm2-135m-instruct", default_cache_dir())
    if args.dry_run:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tiny random model is the tests' own
        from tests.support import save_tiny_llm

        folder = save_tiny_llm(Path(tempfile.mkdtemp()) / "tiny", vocab_from=smol)
        n = 4
    else:
        folder = Path(args.model) if args.model else smol
        n = args.batch
    lm = LanguageModel.load("local", str(folder), device=args.device, dtype="auto")
    prompts = [lm.chat_prompt(QUESTIONS[i % len(QUESTIONS)] + f" (#{i})") for i in range(n)]
    settings = GenerationSettings(max_new_tokens=args.new_tokens, stop=())
    lm.generate(prompts[:2], settings, batch_size=2)  # warm-up

    t = time.perf_counter()
    single = [lm.generate([p], settings, batch_size=1)[0] for p in prompts]
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    batched = lm.generate(prompts, settings, batch_size=n)
    t_batch = time.perf_counter() - t

    toks = sum(g.tokens_out for g in batched)
    same = [a.text == b.text for a, b in zip(single, batched)]
    result = {
        "benchmark": "llm_generate_batched_vs_single",
        "model": str(folder.name),
        "params": lm.num_parameters(),
        "device": args.device,
        "hardware": {**hardware(), "machine": platform.machine()},
        "prompts": n,
        "new_tokens": args.new_tokens,
        "single_seconds": t_single,
        "batched_seconds": t_batch,
        "single_tokens_per_s": sum(g.tokens_out for g in single) / t_single,
        "batched_tokens_per_s": toks / t_batch,
        "speedup": t_single / t_batch,
        "identical_answers": f"{sum(same)}/{len(same)}",
        "dry_run": args.dry_run,
    }
    print(json.dumps(result, indent=1))
    if not args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"llm_{args.device}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
