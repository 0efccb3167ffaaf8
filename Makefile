# The two commands of the README. Each one sets up whatever is missing first (venv, tools, control plane).
.PHONY: test demo bootstrap crds benchmark clean

test: bootstrap          ## lint, types, contracts and every test tier (e2e on a real control plane)
	hack/check.sh

demo: bootstrap          ## a local control plane + the operator reconciling the examples, shown with kubectl
	.venv/bin/python hack/demo.py

bootstrap:
	hack/bootstrap.sh

crds: bootstrap          ## regenerate crds/ from the API models
	.venv/bin/moeops crds

benchmark: bootstrap     ## the benchmarks of docs/benchmarks.md
	.venv/bin/python -m pip install --quiet -e ".[dev,bench]"
	.venv/bin/python benchmarks/operator_scale.py
	.venv/bin/python benchmarks/moe_layer.py

clean:
	rm -rf .venv .cache .tmp
