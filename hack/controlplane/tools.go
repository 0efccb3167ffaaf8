//go:build tools

// Package tools records the main packages that build.sh compiles, so `go mod tidy` keeps them resolvable.
// Test infrastructure only: moeops itself is Python.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
