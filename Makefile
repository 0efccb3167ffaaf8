# The two commands of the README. Each one sets up whatever is missing first (venv, tools, control plane).
.PHONY: test test-fast demo bootstrap crds chart-crds benchmark clean

test: bootstrap          ## lint, types, contracts and every test tier (e2e on a real control plane)
	hack/check.sh

test-fast: bootstrap     ## the developer's loop: the same checks, and every test not marked slow, e2e or journey
	hack/check.sh -m "not slow and not e2e and not journey"

demo: bootstrap          ## the whole platform locally: apply a job, watch it train in real pods, serve it, ask it
	.venv/bin/python hack/demo.py

bootstrap:
	hack/bootstrap.sh

crds: bootstrap          ## regenerate crds/ from the API models, and the chart's copy of them
	.venv/bin/moeops crds
	$(MAKE) chart-crds

chart-crds:              ## copy crds/ into the Helm chart (Helm installs a chart's crds/ folder; a test keeps them equal)
	cp crds/*.yaml charts/moeops/crds/

benchmark: bootstrap     ## the benchmarks of docs/benchmarks.md
	.venv/bin/python -m pip install --quiet -e ".[dev,bench]"
	.venv/bin/python benchmarks/operator_scale.py
	.venv/bin/python benchmarks/moe_layer.py
	.venv/bin/python benchmarks/moe_vs_dense.py

clean:
	rm -rf .venv .cache .tmp
