//go:build tools

// Package tools records the etcd server command that build.sh compiles, so
// that `go mod tidy` keeps its requirements in go.mod/go.sum. Never compiled.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
