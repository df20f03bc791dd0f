//go:build tools

// Package tools pins the helm CLI that tests/helm/build.sh builds for the chart tests.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
