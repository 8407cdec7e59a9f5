# Mirage GPU image: CUDA 13 + cuDNN runtime, ONNX Runtime GPU and TensorRT, Ray Serve.
#
#   docker build -t mirage-gpu:0.1.0 .
#   docker run --rm --gpus all --network host -v mirage-models:/models mirage-gpu:0.1.0
#
# Dependencies come from the project's lists only (no package is named here): requirements.txt
# and requirements-nodeps.txt installed exactly as scripts/setup.sh installs them, then the GPU
# extras of requirements-gpu.txt. tests/unit/test_deploy_configs.py checks that. Weights and
# compiled TensorRT engines live on the /models volume. Ports, UDP media and the one-off engine
# build (`python -m mirage models compile`): docs/gpu.md.

# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: keep the base on CUDA 13 with cuDNN.
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python only: every native library Mirage uses ships inside its wheels (PyAV's FFmpeg,
# OpenCV, LiteRT, ONNX Runtime, TensorRT), and CUDA/cuDNN come with the base image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 mirage \
 && useradd --uid 10001 --gid mirage --create-home --shell /bin/bash mirage

WORKDIR /app
ENV VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH

# The dependency layer, rebuilt only when a list changes. Same commands and flags as
# scripts/setup.sh; then onnxruntime-gpu replaces the CPU onnxruntime.
COPY requirements.txt requirements-nodeps.txt requirements-gpu.txt ./
RUN python3 -m venv .venv \
 && .venv/bin/python -m pip install -q --upgrade pip \
 && .venv/bin/python -m pip install -q -r requirements.txt \
 && .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt \
 && if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then \
      echo "opencv-python (the GUI build) was pulled in; keep one OpenCV, the headless one (scripts/setup.sh)" >&2; exit 1; \
    fi \
 && .venv/bin/python -m pip uninstall -y -q onnxruntime \
 && .venv/bin/python -m pip install -q -r requirements-gpu.txt

# The project itself, editable as scripts/setup.sh installs it (configs/ stays beside the code),
# then the same embedded-model check setup.sh ends with.
COPY . .
RUN .venv/bin/python -m pip install -q --no-deps -e . \
 && .venv/bin/python -m mirage models status --embedded-only >/dev/null

# Weights and engines: a volume, written by `python -m mirage models fetch|compile`. Engines are
# named by their cache key, so one volume can serve several GPU models.
ENV MIRAGE_MODELS_DIR=/models \
    MIRAGE_ENGINE_DIR=/models/engines \
    MIRAGE_PERSIST_MODELS=0 \
    RAY_USAGE_STATS_ENABLED=0
RUN mkdir -p /models/engines && chown -R mirage:mirage /models
VOLUME ["/models"]

# 8000/tcp: the web page, WebSocket signalling and the JSON endpoints (Serve's HTTP proxy).
# 8265/tcp: the Ray dashboard (publish it only on a trusted network).
# WebRTC media is UDP on random ephemeral ports chosen by aioice. Either run with
# `--network host`, or pin the range and publish it:
#   --sysctl net.ipv4.ip_local_port_range="40000 40999" -p 40000-40999:40000-40999/udp
# with MIRAGE_STUN_URLS set so the server learns its public address, or relay through TURN
# (MIRAGE_TURN_URL, MIRAGE_FORCE_RELAY=1). See docs/gpu.md.
EXPOSE 8000 8265

USER mirage

# Serve's proxy answers /health once the app is up; model loading and Ray start-up take a while.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["serve", "run", "configs/serve_a10g.yaml"]
