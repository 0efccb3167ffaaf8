# syntax=docker/dockerfile:1
#
# moeops-runtime: the trainer's workers and the model server. The operator sets the command:
#   moeops train --config /etc/moeops/config.json   (MoETrainingJob workers)
#   moeops serve                                    (InferenceService model servers)
# Extras runtime,serving,telemetry: torch 2.15.0, the bus, tokenizers, FastAPI/uvicorn, ONNX export.
#
# Base: python:3.11 slim, not nvidia/cuda. torch 2.15.0 from PyPI is a CUDA 13.2 build (2.15.0+cu132) whose
# wheel depends on the CUDA user-space libraries as wheels of their own (cuda-toolkit[cublas,cudart,...]==13.2.2,
# nvidia-cudnn-cu13, nvidia-nccl-cu13, nvidia-cusparselt-cu13, nvidia-nvshmem-cu13) and loads those, not a
# system CUDA. An nvidia/cuda:13.2.x-runtime-ubuntu24.04 base would add a second copy of the same libraries
# (gigabytes) that torch never opens, and Ubuntu 24.04's Python is 3.12, not the 3.11 of the other images. The
# driver (libcuda.so, libnvidia-ml.so) comes from the host: the NVIDIA container toolkit mounts it into a
# container given GPUs by the device plugin (NVIDIA_DRIVER_CAPABILITIES below: compute and utility).
# NVIDIA_VISIBLE_DEVICES is deliberately not set: the device plugin sets it to the GPUs the pod was given, and
# `all` here would expose every GPU of the node to a pod that asked for none.
#
# No C compiler in the final stage: `moeops train` and `moeops serve` run eager PyTorch. torch.compile
# (Inductor/Triton, moeops.serving.exporting.export.compile_for_serving) compiles C at run time and needs gcc; an image for
# that would add it on top of this one.
#
# Build from the repository root (images/README.md):
#   docker build -f images/runtime.Dockerfile -t REGISTRY/moeops-runtime:TAG .
#
# The base is pinned by tag here; the release process pins it by digest too, by passing
#   --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>
# (digests cannot be resolved where these files are written: no registry access).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: builds the project's wheel and installs it with its extras into /opt/venv ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python -m pip install hatchling==1.33.0 \
 && python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY operator/moeops operator/moeops
COPY services/moeops services/moeops
# Every dependency pinned (hack/lock_images.py): two builds of one commit install the same versions.
COPY images/constraints.txt images/constraints.txt
# The venv keeps the .pyc files pip compiles at install (the final image runs with a read-only root filesystem,
# where nothing could write them later); its own pip is removed: nothing installs at run time. setuptools stays
# in the venv: torch declares it a dependency.
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && set -- /wheels/moeops-*.whl \
 && /opt/venv/bin/pip install "$1[runtime,serving,telemetry]" --constraint images/constraints.txt \
 && /opt/venv/bin/pip uninstall --yes pip

# ---- final: the slim base, the venv, a non-root user; no compiler, no pip ----
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="moeops-runtime" \
      org.opencontainers.image.description="moeops trainer workers and model server (PyTorch 2.15, CUDA 13.2 from PyPI wheels)" \
      org.opencontainers.image.source="https://github.com/moeops/moeops" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# The base's own pip (and setuptools/wheel) go too; uid/gid 65532 ("nonroot", as in distroless) with a home.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home \
      --shell /usr/sbin/nologin nonroot
COPY --from=builder /opt/venv /opt/venv
# The operator runs these pods with a read-only root filesystem and a writable emptyDir at /tmp: caches
# (XDG_CACHE_HOME: torch hub/kernels, Triton) go there, whatever uid the pod runs as.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/nonroot \
    XDG_CACHE_HOME=/tmp/.cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/nonroot
# Numeric, so that the kubelet can check runAsNonRoot without a passwd lookup.
USER 65532:65532
# The operator always sets the command (train or serve); a bare `docker run` prints the usage.
CMD ["moeops", "--help"]
