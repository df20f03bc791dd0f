//go:build tools

// Package tools records the commands build.sh compiles, so that `go mod tidy`
// keeps their requirements in go.mod/go.sum. It is never compiled.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
	_ "github.com/google/go-containerregistry/cmd/crane"
)
