//go:build tools

// Package tools pins controller-gen and the Prometheus Operator's API types, from which tests/helm/crds.sh
// generates the ServiceMonitor and PrometheusRule CRDs that the chart tests apply to the control plane.
package tools

import (
	_ "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	_ "sigs.k8s.io/controller-tools/cmd/controller-gen"
)
