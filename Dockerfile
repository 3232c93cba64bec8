# facekd image. CPU by default; CUDA with:
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# The install steps are the README's (scripts/bootstrap.sh), so the image and a laptop agree.
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG TORCH_INDEX=""
ENV PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends git make python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt requirements.lock pyproject.toml README.md ./
COPY scripts ./scripts
COPY src ./src
RUN if [ -n "$TORCH_INDEX" ]; then PIP_EXTRA_INDEX_URL="$TORCH_INDEX" bash scripts/bootstrap.sh; \
    else bash scripts/bootstrap.sh; fi
COPY . .
ENTRYPOINT ["facekd"]
CMD ["--help"]
