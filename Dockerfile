# unidb service image. Postgres runs in its own container (see docker-compose.yml), so the
# image needs only the server extra; set UNIDB_DATABASE_URL to reach it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY schema ./schema
COPY indexing ./indexing
COPY service ./service
# docker-compose's scale profile builds it with EXTRAS=server,embed,ray for its Ray head
ARG EXTRAS=server
RUN pip install ".[${EXTRAS}]"

RUN useradd --create-home --uid 10001 unidb && mkdir -p /data && chown unidb /data
USER unidb
ENV UNIDB_HOST=0.0.0.0 UNIDB_PORT=8000 UNIDB_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:8000/healthz').status_code != 200)"
CMD ["unidb", "serve"]
