#!/bin/sh
# Every GPU measurement issue 5 still wants, in one device call of at most 9 minutes (the device's per-command
# limit is 10), the newest first so that a short run still answers it:
#   1. bench.worker_batches: single-image jobs through the worker's own DynamicBatcher at its "auto" batch size
#      and concurrency, 640x480 and 4000x3000 JPEGs decoded by the decoding processes and, where torchvision
#      imports, by CAPTIONER_DECODE_JPEG_ON_GPU's path (worker/decode/gpu_jpeg.py: nvJPEG in the batch preparer),
#      for 4000x3000 also beside the processes (an idle one first), each against the model path fed arrays and
#      fed PIL images; first, which kinds of JPEG nvJPEG decodes, how fast by call size and whether beside a
#      busy GPU (its JPEG engines or its cores), and the trained tiny model's captions of 48 rendered scenes
#      through each way (right images, right places).
#   2. bench.model_path: stages (greedy and beam-3 through CUDA graphs against plain steps), the worker path
#      (JPEGs decoded by threads, by processes at the worker's CPU priority and at the worker's own, and by
#      nvJPEG alone and sharing 4000x3000 batches with the processes as the worker does), the sweep fed arrays, the compiled encoder
#      at batches of 1024. The pipeline baseline ("model") is skipped: measured on 2026-11-29 and -30 (226-227x).
#   3. bench.decode_pool: decoding in threads against processes on the machine's cores, at both priorities.
# Needs only torch, transformers and pillow (and torchvision for the nvJPEG sides). Output goes to the terminal
# and to $OUT/gpu-run.txt (the device tool's folder) or ./gpu-run.txt.
#
#     sh bench/gpu_run.sh
#
# DEVICE=cpu EXTRA="--images 8 --batch-size 4 --sweep-batch-sizes 4 --compile-batch-size 4 --skip model precision"
# tries step 2 on a CPU (a later --skip replaces the earlier one); tests/unit/test_bench_*.py run the rest there.
set -u
out="${OUT:-.}/gpu-run.txt"
: > "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
timeout 200 python -m bench.worker_batches --device "${DEVICE:-cuda}" --clients auto 2>&1 \
    | grep -v '^\[transformers\]' | tee -a "$out"
timeout 290 python -m bench.model_path --device "${DEVICE:-cuda}" --skip model precision \
    --sweep-dtypes float16 --sweep-batch-sizes 512 1024 --step-modes auto dynamic --sweep-inputs arrays \
    --compile-batch-size 1024 --decode-niceness 10 0 ${EXTRA:-} 2>&1 \
    | grep -v '^\[transformers\]' | tee -a "$out"
timeout 60 python -m bench.decode_pool --seconds 1 --niceness 10 0 2>&1 | tee -a "$out"
