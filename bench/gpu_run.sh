#!/bin/sh
# Every measurement issue 5 still needs from a GPU, in one call of about 7 minutes (the device's per-command
# limit is 10): the model and worker paths (JPEGs decoded by threads, by processes, and on the GPU by nvJPEG
# where torchvision imports), CUDA graphs against plain steps and PIL images against arrays at every batch size
# of the sweep (fp16; bf16 ran as fast before), the compiled encoder at batches of 1024, then decoding in
# threads against processes on the machine's cores. Needs only torch, transformers and pillow. Output goes to the terminal and to
# $OUT/gpu-run.txt (the device tool's folder) or ./gpu-run.txt.
#
#     sh bench/gpu_run.sh
#
# DEVICE=cpu EXTRA="--images 8 --batch-size 4 --sweep-batch-sizes 4 --skip model precision compile" tries it on
# a CPU (a later --skip replaces the earlier one).
set -u
out="${OUT:-.}/gpu-run.txt"
: > "$out"
PYTHONPATH=. timeout 420 python -m bench.model_path --device "${DEVICE:-cuda}" --skip precision \
    --sweep-dtypes float16 --sweep-batch-sizes 256 512 1024 --step-modes auto graph --sweep-inputs images arrays \
    --compile-batch-size 1024 ${EXTRA:-} 2>&1 | tee -a "$out"
PYTHONPATH=. timeout 120 python -m bench.decode_pool --seconds 3 2>&1 | tee -a "$out"
