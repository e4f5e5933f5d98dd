# The worker image: one worker process, for one GPU; run one container per GPU (compose reserves one, Kubernetes asks
# for nvidia.com/gpu: 1). torch and torchvision stay outside the lock (docs/operations.md): PyPI's Linux wheels of
# torch are CUDA builds that bring CUDA's libraries as wheels of their own, so the image needs no CUDA base, only the
# host's NVIDIA driver (the NVIDIA container toolkit mounts it). torch 2.13.0's are built for CUDA 13 (they require
# the nvidia-*-cu13 wheels), which needs a driver of the 580 series or later. For an older driver, take an older
# CUDA's build from PyTorch's own index where it has one for this torch, e.g.
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128.
# The base is pinned by its exact tag. Pin its digest as well (FROM python:3.11.14-slim-bookworm@sha256:...) from your
# registry's answer: this file was written without network access to read one.
FROM python:3.11.14-slim-bookworm
ARG TORCH_VERSION=2.13.0
# The torchvision built for that torch: what CAPTIONER_DECODE_JPEG_ON_GPU=true decodes JPEGs with (nvJPEG).
ARG TORCHVISION_VERSION=0.28.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
# torch first, then the lock, as `make install` does: the lock's pins of torch's own dependencies win.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY requirements/worker.txt requirements/worker.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/worker.txt
COPY pyproject.toml README.md ./
COPY common ./common
COPY worker ./worker
COPY cli ./cli
COPY captioner ./captioner
# Models downloaded from the hub are cached in /models: mount a volume there to keep them across restarts.
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && useradd --system --no-log-init --no-create-home --uid 10001 --user-group --shell /usr/sbin/nologin captioner \
    && mkdir /models \
    && chown 10001:10001 /models
# CAPTIONER_COMPILE_ENCODER=true needs a C compiler at run time (Triton builds its kernel launchers with one), which
# this image lacks: the worker logs the failed compile and encodes eager, as fast as it was without the setting.
ENV HF_HOME=/models
# A numeric user, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# The worker's Prometheus metrics (CAPTIONER_METRICS_PORT).
EXPOSE 9100
# Ready once its model is loaded and while its device works: its own report in Redis (cli/worker_ready.py). The
# first start may download the model: minutes.
HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=3 CMD ["captioner", "worker-ready"]
CMD ["captioner", "worker"]
