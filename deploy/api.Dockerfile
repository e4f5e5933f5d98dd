# The API image: Flask + gunicorn, no torch (the API never imports it), at exactly the lock's versions.
# The base is pinned by its exact tag. Pin its digest as well (FROM python:3.11.14-slim-bookworm@sha256:...) from your
# registry's answer: this file was written without network access to read one.
FROM python:3.11.14-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements/api.txt requirements/api.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/api.txt
COPY pyproject.toml README.md ./
COPY common ./common
COPY api ./api
COPY cli ./cli
COPY captioner ./captioner
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && useradd --system --no-log-init --no-create-home --uid 10001 --user-group --shell /usr/sbin/nologin captioner
# Where the API finds the model's tokenizer to count prompts with (api/prompts.py): the workers' model cache, mounted.
ENV HF_HOME=/models
# A numeric user, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8000
# Alive: the process answers. Whether it can serve (Redis and S3 answer) is /readyz, which compose and Kubernetes ask.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["captioner", "api", "--host", "0.0.0.0", "--port", "8000"]
