{{/* The chart name, for the app.kubernetes.io/name label. */}}
{{- define "osbuild-controller.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every object. The release name when it contains the chart name (so `helm install
osbuild-controller` gives the names of the kustomize manifests), else "<release>-<chart>".
*/}}
{{- define "osbuild-controller.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "osbuild-controller.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: in immutable selectors, never change them after the first install. */}}
{{- define "osbuild-controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "osbuild-controller.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The labels of every object (the kustomize manifests' set, plus helm.sh/chart). */}}
{{- define "osbuild-controller.labels" -}}
{{ include "osbuild-controller.selectorLabels" . }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: osbuild-controller
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "osbuild-controller.chart" . }}
{{- end }}

{{- define "osbuild-controller.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "osbuild-controller.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: the name of an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is given, else repository:tag (tag default: appVersion). */}}
{{- define "osbuild-controller.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The leader-election Lease: named after the release, so two releases never share one. */}}
{{- define "osbuild-controller.leaseName" -}}
{{- include "osbuild-controller.fullname" . }}
{{- end }}

{{/* Refuse what this version cannot do, with the reason, instead of silently ignoring it. */}}
{{- define "osbuild-controller.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: without it every replica would write" }}
{{- end }}
{{- end }}

{{/*
The in-cluster audit's namespaced rules: list and watch the workload kinds (Pods and Nodes with the
controller's own rights), get the pull secrets and ServiceAccounts a workload names.
*/}}
{{- define "osbuild-controller.auditNamespacedRules" -}}
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets", "replicasets"]
  verbs: ["list", "watch"]
- apiGroups: ["batch"]
  resources: ["jobs", "cronjobs"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["secrets", "serviceaccounts"]
  verbs: ["get"]
{{- end }}
