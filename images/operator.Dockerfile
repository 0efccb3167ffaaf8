# syntax=docker/dockerfile:1
#
# moeops-operator: the control plane. One image, three commands (set by the chart):
#   moeops operator run         the kopf operator (this image's default command)
#   python -m moeops.rebalancer the expert rebalancer
#   moeops-carbon aggregator    the carbon aggregator
# Extras bus,carbon,telemetry on top of the base dependencies (kopf, kubernetes, pydantic, numpy, click): no torch.
#
# Build from the repository root (images/README.md):
#   docker build -f images/operator.Dockerfile -t REGISTRY/moeops-operator:TAG .
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
# where nothing could write them later); its own pip is removed: nothing installs at run time.
RUN python -m pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && set -- /wheels/moeops-*.whl \
 && /opt/venv/bin/pip install "$1[bus,carbon,telemetry]" --constraint images/constraints.txt \
 && /opt/venv/bin/pip uninstall --yes pip

# ---- final: the slim base, the venv, a non-root user; no compiler, no pip ----
FROM ${PYTHON_IMAGE} AS operator
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="moeops-operator" \
      org.opencontainers.image.description="moeops control plane: operator, rebalancer, carbon aggregator" \
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
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/nonroot
WORKDIR /home/nonroot
# Numeric, so that the kubelet can check runAsNonRoot without a passwd lookup.
USER 65532:65532
CMD ["moeops", "operator", "run"]
