// All three images at once, from the repository root:
//   docker buildx bake -f images/docker-bake.hcl                          (load locally)
//   REGISTRY=ghcr.io/acme TAG=0.1.0 docker buildx bake -f images/docker-bake.hcl --push
// Paths are relative to the directory bake runs in: run it from the repository root.

variable "REGISTRY" {
  default = "ghcr.io/moeops"
}

variable "TAG" {
  default = "0.1.0"
}

// The release process sets this to the tag pinned by digest: python:3.11.14-slim-bookworm@sha256:<digest>.
variable "PYTHON_IMAGE" {
  default = "python:3.11.14-slim-bookworm"
}

variable "REVISION" {
  default = "unknown"
}

group "default" {
  targets = ["operator", "carbon-agent", "runtime"]
}

target "_common" {
  context = "."
  args = {
    PYTHON_IMAGE = PYTHON_IMAGE
    VERSION      = TAG
    REVISION     = REVISION
  }
}

target "operator" {
  inherits   = ["_common"]
  dockerfile = "images/operator.Dockerfile"
  tags       = ["${REGISTRY}/moeops-operator:${TAG}"]
}

target "carbon-agent" {
  inherits   = ["_common"]
  dockerfile = "images/carbon-agent.Dockerfile"
  tags       = ["${REGISTRY}/moeops-carbon-agent:${TAG}"]
}

target "runtime" {
  inherits   = ["_common"]
  dockerfile = "images/runtime.Dockerfile"
  tags       = ["${REGISTRY}/moeops-runtime:${TAG}"]
}
