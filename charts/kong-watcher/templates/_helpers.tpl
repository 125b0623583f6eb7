{{/*
Labels of every object: the two config/default gives them (app.kubernetes.io/name, and
managed-by, here Helm's own) plus Helm's chart, instance and version. Selectors and pod
templates keep only app.kubernetes.io/component, as in config/default: a Deployment's selector
cannot change after install, so it must not carry a version.
*/}}
{{- define "kong-watcher.labels" -}}
app.kubernetes.io/name: kong-watcher
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The webhook's component labels (metadata of its namespaced objects). */}}
{{- define "kong-watcher.webhookLabels" -}}
app.kubernetes.io/component: webhook
{{ include "kong-watcher.labels" . }}
{{- end }}
