# syntax=docker/dockerfile:1
#
# One Dockerfile, two images; the TORCH_FLAVOR build arg picks the torch wheels:
#   API (CPU torch, smaller):  docker build -t latentq:cpu .
#   GPU worker (CUDA torch):   docker build --build-arg TORCH_FLAVOR=cu124 -t latentq:cuda .
# The CUDA wheels carry the CUDA runtime and cuDNN as pip packages, so a plain
# Python base image is enough; the host's NVIDIA driver is mounted in at run
# time by the NVIDIA Container Toolkit (compose: deploy.resources...devices).
#
# Usage: docker run latentq:cpu api --host 0.0.0.0 --port 8000
#        docker run --gpus all latentq:cuda worker --model sd15 --device cuda

ARG PYTHON_VERSION=3.11

# ---- build: a virtualenv with torch and the project --------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_FLAVOR=cpu
ARG TORCH_VERSION=2.6.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# torch first, pinned, from the PyTorch index for the chosen flavour (its own
# layer, so code changes do not re-download gigabytes). The constraint stops
# `pip install .` from swapping it for PyPI's default torch build.
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_FLAVOR}" \
 && echo "torch==${TORCH_VERSION}" > /opt/torch-constraint.txt

# Every other package exactly as locked, hashes checked (requirements.lock; refresh: `bash .ci/lock`),
# in its own layer: a code change re-installs only latentq itself.
WORKDIR /src
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# Only what the build needs (no .venv, .git or results from the checkout); its dependencies are in already.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps --constraint /opt/torch-constraint.txt . && pip check

# ---- runtime: the virtualenv, a non-root user, nothing else --------------------
FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/latentq/.cache/huggingface \
    LATENTQ_STORE=/results

# The mount points exist in the image, owned by the app user, so that Docker
# seeds empty named volumes (results, hf-cache) with that ownership and the
# non-root process can write to them.
RUN useradd --create-home --uid 1000 --user-group latentq \
 && mkdir -p /results /home/latentq/.cache/huggingface \
 && chown -R latentq:latentq /results /home/latentq/.cache

COPY --from=build /opt/venv /opt/venv

USER latentq
WORKDIR /home/latentq
EXPOSE 8000
# No HEALTHCHECK here: the same image runs workers, which serve no HTTP; the
# API's healthcheck (GET /healthz) is in docker-compose.yml.
ENTRYPOINT ["latentq"]
CMD ["--help"]
