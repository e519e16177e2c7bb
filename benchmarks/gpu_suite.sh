#!/usr/bin/env bash
# The GPU measurements of the performance issue, as one command for a lent GPU machine (H100).
#
# It needs only torch + transformers (the device image has both); results go to $OUT (or
# benchmarks/results when OUT is unset) as JSON with the GPU named, plus a log.
#
#   bash benchmarks/gpu_suite.sh            # ~4-6 minutes on an H100
#   bash benchmarks/gpu_suite.sh --quick    # batch 1 only, fewer tokens: a smoke test
#
# What it measures (docs/performance.md explains each number):
#   1. greedy decode steps/s of a random-initialised 1.17B Llama-style model in bf16: plain
#      generate() vs generate(cache_implementation="static") vs mmbench's static engine with CUDA
#      graphs, at batch 1, 8 and 32, against the memory-bandwidth bound measured in the same process;
#      token agreement of the engine with generate();
#   2. the same engine without CUDA graphs (isolates what the graphs buy);
#   3. when the authors' MAGIC code is carried in .ref/MAGIC (their repository's image_captioning/
#      language_model and image_captioning/clip, e.g. `git archive` from a `fetch` of yxuansu/MAGIC
#      into a folder that .git/info/exclude ignores, named in the device call's carry): mmbench's MAGIC
#      vs theirs on GPT-2-base + ViT-B/32-sized random weights, one process, captions/s and identity.
#      mmbench's config layer needs pydantic, which the device image lacks: carry its wheels
#      (pydantic, pydantic-core, annotated-types, typing-inspection) as the device README shows and
#      install them to /tmp/site before this script.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
batches="1,8,32"
tokens=128
if [[ "${1:-}" == "--quick" ]]; then batches="1"; tokens=32; fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" | tee "$out/gpu_suite.log"
status=0
timeout 420 python3 benchmarks/bench_decode.py --device cuda --size llama-1b --hf-static \
    --batches "$batches" --new-tokens "$tokens" --out "$out" 2>&1 | tee -a "$out/gpu_suite.log" || status=1
timeout 120 python3 benchmarks/bench_decode.py --device cuda --size llama-1b --no-graphs \
    --batches 1 --new-tokens 64 --repeats 2 --out "$out/no_graphs" 2>&1 | tee -a "$out/gpu_suite.log" || status=1
[[ -f "$out/no_graphs/decode_cuda_llama-1b.json" ]] && mv "$out/no_graphs/decode_cuda_llama-1b.json" "$out/decode_cuda_llama-1b_no_graphs.json"
if [[ -d .ref/MAGIC/image_captioning ]]; then
    MAGIC_ROOT="$PWD/.ref/MAGIC" timeout 300 python3 benchmarks/bench_magic.py --device cuda --size base --images 10 \
        --reference tests/golden/magic_reference/reference_adapter.py 2>&1 | tee -a "$out/gpu_suite.log" || status=1
    [[ -f benchmarks/results/magic_cuda.json ]] && cp benchmarks/results/magic_cuda.json "$out/"
else
    echo "MAGIC vs reference skipped: .ref/MAGIC not carried" | tee -a "$out/gpu_suite.log"
fi
exit $status
