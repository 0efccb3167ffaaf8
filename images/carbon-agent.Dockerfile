# syntax=docker/dockerfile:1
#
# moeops-carbon-agent: the carbon node agent (a DaemonSet, one pod per GPU node): `moeops-carbon agent`.
# Same Python environment as moeops-operator (extras bus,carbon,telemetry; no torch), and the same builder stage
# word for word (tests/unit/test_images_dockerfiles.py checks it), so BuildKit builds it once for both images.
# A separate file rather than a build target of operator.Dockerfile: one Dockerfile per image, each buildable
# without --target.
#
# NVML (libnvidia-ml.so) is not in the image: the NVIDIA container toolkit mounts the host driver's copy when
# NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES are set (below: every GPU of the node, the `utility`
# capability only, which is NVML and nvidia-smi; no CUDA). The agent also reads, from hostPath mounts the chart
# declares: the kubelet's pod-resources socket (/var/lib/kubelet/pod-resources/kubelet.sock: which GPU belongs
# to which container) and RAPL (/sys/class/powercap: CPU energy). NVML works as the non-root user; the socket
# and `energy_uj` are root-only on most nodes, so without `runAsUser: 0` in the DaemonSet the agent attributes GPUs
# through their processes' cgroups (hostPID) and estimates CPU energy instead (moeops.carbon.meter.rapl).
#
# Build from the repository root (images/README.md):
#   docker build -f images/carbon-agent.Dockerfile -t REGISTRY/moeops-carbon-agent:TAG .
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
FROM ${PYTHON_IMAGE} AS carbon-agent
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="moeops-carbon-agent" \
      org.opencontainers.image.description="moeops carbon node agent: GPU energy (NVML) attributed to pods" \
      org.opencontainers.image.source="https://github.com/moeops/moeops" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# The base's own pip (and setuptools/wheel) go too; uid/gid 65532 ("nonroot", as in distroless) with a home, and
# the default spool directory (MOEOPS_CARBON_SPOOL_DIR) owned by it for when the chart mounts nothing there.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home \
      --shell /usr/sbin/nologin nonroot \
 && install -d -o 65532 -g 65532 /var/lib/moeops/carbon-spool
COPY --from=builder /opt/venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/nonroot \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
WORKDIR /home/nonroot
# Numeric, so that the kubelet can check runAsNonRoot without a passwd lookup.
USER 65532:65532
CMD ["moeops-carbon", "agent"]
