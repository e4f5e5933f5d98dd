# The API image: Flask + gunicorn, no torch (the API never imports it). Installs exactly the lock's versions.
FROM python:3.11-slim
WORKDIR /app
COPY requirements/api.txt requirements/api.txt
RUN pip install --no-cache-dir --require-hashes -r requirements/api.txt
COPY pyproject.toml README.md ./
COPY common ./common
COPY api ./api
COPY cli ./cli
RUN pip install --no-cache-dir --no-deps .
# The model's tokenizer, which the API counts prompts with (api/prompts.py), is fetched into this cache at start.
ENV HF_HOME=/tmp/huggingface
USER nobody
EXPOSE 8000
CMD ["captioner", "api", "--host", "0.0.0.0", "--port", "8000"]
