# The worker image: one process per GPU. The base image brings CUDA and a CUDA build of torch, which stays
# outside the lock (docs/operations.md); everything else installs at the lock's versions.
# Its torch (2.7.1) predates the 2.13.0 the suite runs on: the images get pinned anew with issue 20.
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
WORKDIR /app
COPY requirements/worker.txt requirements/worker.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/worker.txt
COPY pyproject.toml README.md ./
COPY common ./common
COPY worker ./worker
COPY cli ./cli
RUN pip install --no-cache-dir --no-deps .
# The base image's torchvision (matched to its torch) is what CAPTIONER_DECODE_JPEG_ON_GPU=true decodes JPEGs with
# (nvJPEG). Without torchvision the worker logs that it ignores the setting and decodes on the CPU.
# CAPTIONER_COMPILE_ENCODER=true needs a C compiler at run time (Triton builds its kernel launchers with one);
# without it the worker logs the failed compile and encodes eager, as fast as it was without the setting.
# Models downloaded from the hub are cached here; mount a volume to keep them across restarts.
ENV HF_HOME=/models
CMD ["captioner", "worker"]
