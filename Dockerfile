# Mirage GPU image: CUDA 13, ONNX Runtime GPU and TensorRT, Ray Serve. Needs an R580+ NVIDIA driver.
#
#   docker build -t mirage-gpu:0.1.0 .
#   docker run --rm --gpus all --network host -v mirage-models:/models mirage-gpu:0.1.0
#
# Dependencies come from the project's lists only (no package is named here): requirements.txt
# and requirements-nodeps.txt installed exactly as scripts/setup.sh installs them, then the GPU
# extras of requirements-gpu.txt (never requirements-test.txt: pytest, browsers' driver, judges,
# linters). tests/unit/test_deploy_configs.py checks that. Weights and
# compiled TensorRT engines live on the /models volume. Ports, UDP media and the one-off engine
# build (`python -m mirage models compile`): docs/gpu.md.

# CUDA/cuDNN come from ONE place, the wheels: onnxruntime-gpu[cuda,cudnn] pulls exactly the
# CUDA 13 runtime and cuDNN 9 libraries it was built against (nvidia-cuda-runtime~=13.0,
# nvidia-cudnn-cu13~=9.0 ...), and Mirage loads them with onnxruntime.preload_dlls(). So the base
# is CUDA's "base" flavour, which carries no CUDA libraries of its own that could disagree with
# the wheels' minors (a cudnn-runtime base would bring a second, different cuDNN 9.x). Its
# NVIDIA_REQUIRE_CUDA (cuda>=13.0, with exceptions for the data-center driver branches NVIDIA's
# CUDA forward compatibility covers) lets the NVIDIA container toolkit refuse other hosts whose
# driver is older than R580; Mirage also checks, at start-up, the CUDA version the loaded driver
# reports (one log line, docs/gpu.md).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04
FROM ${BASE_IMAGE}

# tensorrt-cu13 on PyPI is a front package: its tensorrt-cu13-libs and -bindings there are
# placeholders that fetch the real wheels from NVIDIA's own package index while installing. As
# NVIDIA's TensorRT install guide says, pip gets that index as an extra index for the GPU extras
# below. Behind a mirror, pass --build-arg NVIDIA_PIP_INDEX=<your mirror of it> (docs/gpu.md).
ARG NVIDIA_PIP_INDEX=https://pypi.nvidia.com

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python only: every native library Mirage uses ships inside its wheels (PyAV's FFmpeg,
# OpenCV, LiteRT, ONNX Runtime, TensorRT, and CUDA/cuDNN through onnxruntime-gpu's extras).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 mirage \
 && useradd --uid 10001 --gid mirage --create-home --shell /bin/bash mirage

WORKDIR /app
ENV VIRTUAL_ENV=/app/.venv \
    PATH=/app/.venv/bin:$PATH

# The dependency layer, rebuilt only when a list changes. Same commands and flags as
# scripts/setup.sh; then onnxruntime-gpu replaces the CPU onnxruntime (NVIDIA's index for TensorRT).
COPY requirements.txt requirements-nodeps.txt requirements-gpu.txt ./
RUN python3 -m venv .venv \
 && .venv/bin/python -m pip install -q --upgrade pip \
 && .venv/bin/python -m pip install -q -r requirements.txt \
 && .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt \
 && if .venv/bin/python -m pip show -q opencv-python >/dev/null 2>&1; then \
      echo "opencv-python (the GUI build) was pulled in; keep one OpenCV, the headless one (scripts/setup.sh)" >&2; exit 1; \
    fi \
 && .venv/bin/python -m pip uninstall -y -q onnxruntime \
 && PIP_EXTRA_INDEX_URL="$NVIDIA_PIP_INDEX" .venv/bin/python -m pip install -q -r requirements-gpu.txt

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
