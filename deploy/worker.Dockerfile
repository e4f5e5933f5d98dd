# The worker image: one process per GPU. The base image brings CUDA and a CUDA build of torch.
FROM pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY worker ./worker
COPY cli ./cli
RUN pip install --no-cache-dir '.[worker]'
# The base image's torchvision (matched to its torch) is what CAPTIONER_DECODE_JPEG_ON_GPU=true decodes JPEGs with
# (nvJPEG); pip leaves both alone, as the worker asks only for torch>=2.4. Without torchvision the worker logs
# that it ignores the setting and decodes on the CPU.
# CAPTIONER_COMPILE_ENCODER=true needs a C compiler at run time (Triton builds its kernel launchers with one);
# without it the worker logs the failed compile and encodes eager, as fast as it was without the setting.
# Models downloaded from the hub are cached here; mount a volume to keep them across restarts.
ENV HF_HOME=/models
CMD ["captioner", "worker"]
