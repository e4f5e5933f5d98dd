#!/bin/sh
# Every GPU measurement issue 5 has, in one device call of about 7 minutes (the device's per-command limit is
# 10): the model and worker paths (JPEGs decoded by threads, by processes at the worker's CPU priority and at
# the same as the worker's, and on the GPU by nvJPEG where torchvision imports, alone and sharing 4000x3000
# batches with the processes), the sweep fed arrays with the default step mode against plain steps, the
# compiled encoder at batches of 1024, then decoding in threads against processes on the machine's cores.
# Needs only torch, transformers and pillow (and torchvision for the nvJPEG sides). Output goes to the terminal
# and to $OUT/gpu-run.txt (the device tool's folder) or ./gpu-run.txt.
#
#     sh bench/gpu_run.sh
#
# DEVICE=cpu EXTRA="--images 8 --batch-size 4 --sweep-batch-sizes 4 --compile-batch-size 4 --skip model precision"
# tries it on a CPU (a later --skip replaces the earlier one).
set -u
out="${OUT:-.}/gpu-run.txt"
: > "$out"
export PYTHONUNBUFFERED=1
PYTHONPATH=. timeout 420 python -m bench.model_path --device "${DEVICE:-cuda}" --skip precision \
    --sweep-dtypes float16 --sweep-batch-sizes 256 512 1024 --step-modes auto dynamic --sweep-inputs arrays \
    --compile-batch-size 1024 --decode-niceness 10 0 --nvjpeg-shares 0.35 0.5 0.65 ${EXTRA:-} 2>&1 \
    | grep -v '^\[transformers\]' | tee -a "$out"
PYTHONPATH=. timeout 120 python -m bench.decode_pool --seconds 3 --niceness 10 0 2>&1 | tee -a "$out"
