# The API image: Flask + gunicorn, no torch (the API never imports it).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY api ./api
COPY cli ./cli
RUN pip install --no-cache-dir '.[api]'
USER nobody
EXPOSE 8000
CMD ["captioner", "api", "--host", "0.0.0.0", "--port", "8000"]
