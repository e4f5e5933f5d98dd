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
# Where the API finds the model's tokenizer to count prompts with (api/prompts.py): the workers' model cache, mounted.
ENV HF_HOME=/models
USER nobody
EXPOSE 8000
CMD ["captioner", "api", "--host", "0.0.0.0", "--port", "8000"]
