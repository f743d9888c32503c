//go:build tools

// Package tools records the main packages that build.sh compiles, so that
// go mod tidy keeps every module they need in go.mod and go.sum. The build
// tag keeps this file out of any normal build: main packages cannot be
// imported by compiled code.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
