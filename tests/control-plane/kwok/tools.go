//go:build tools

// Package tools records the kwok command that build.sh compiles, so that
// `go mod tidy` keeps its requirements in go.mod/go.sum. Never compiled.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
