{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "lifeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name when it already
contains the chart name, else <release>-<chart>.
*/}}
{{- define "lifeline.fullname" -}}
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

{{- define "lifeline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "lifeline.labels" -}}
helm.sh/chart: {{ include "lifeline.chart" . }}
{{ include "lifeline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lifeline
{{- end }}

{{/*
Labels that select the operator pods; never change them on upgrade
(a Deployment's selector is immutable).
*/}}
{{- define "lifeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lifeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lifeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lifeline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lifeline.leaseName" -}}
{{- default (include "lifeline.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "lifeline.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Rules the operator needs on namespaced objects, wherever it watches. Listed
resource by resource and verb by verb: no wildcards, no Secrets.
*/}}
{{- define "lifeline.namespacedRules" -}}
# Its own kinds: read the spec, write only the status subresource.
- apiGroups: ["lifeline.dev"]
  resources: ["trunks", "botpools", "fallbackpolicies", "notifiers", "failoverdrills", "sipedges"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["lifeline.dev"]
  resources: ["trunks/status", "botpools/status", "fallbackpolicies/status", "notifiers/status", "failoverdrills/status"]
  verbs: ["patch"]
# A BotPool owns a Deployment, a headless Service and a PodDisruptionBudget.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Ready bot pods give BotPool status its endpoints and ready capacity.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# A FallbackPolicy owns its routing ConfigMap.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
# HpaFloor mode raises an existing HPA's minReplicas; it never creates one.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "patch"]
# Events on transitions (failover, failback, scaling limits).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if or .Values.notifications.enabled .Values.probe.readSecretsForCaBundles }}
# Secrets, read one by one by name (never listed or watched): Notifier receivers'
# webhook URLs and PagerDuty routing keys (notifications.enabled), and Trunk
# spec.tls.caBundle Secrets (probe.readSecretsForCaBundles; a ConfigMap needs neither).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end }}

{{/*
Cluster-scoped reads: readiness waits until the CRDs are established.
*/}}
{{- define "lifeline.crdRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* The watched namespaces, comma-separated (watchNamespaces plus the older
     single watchNamespace); empty: every namespace. */}}
{{- define "lifeline.namespaces" -}}
{{- $ns := .Values.watchNamespaces | default list -}}
{{- if .Values.watchNamespace -}}
{{- $ns = append $ns .Values.watchNamespace -}}
{{- end -}}
{{- $ns | uniq | join "," -}}
{{- end -}}

{{/* Read-only cluster rules for the prober's default deny list: node addresses
     and the Service ranges are found at start and never probed. */}}
{{- define "lifeline.probeClusterRules" -}}
{{- if .Values.probe.denyClusterAddresses }}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
- apiGroups: ["networking.k8s.io"]
  resources: ["servicecidrs"]
  verbs: ["list"]
{{- end }}
{{- end -}}
