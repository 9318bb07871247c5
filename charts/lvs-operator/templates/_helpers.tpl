{{/*
Names of the release's objects: "<release>-<part>". Release names longer than 49 characters
are refused (a Service name has at most 63; the longest, "<release>-agent-metrics", adds 14),
rather than cut short into names that might clash.
*/}}
{{- define "lvs-operator.name" -}}
{{- if gt (len .Release.Name) 49 -}}
{{- fail (printf "release name %q is longer than 49 characters: the Service names built from it would exceed 63" .Release.Name) -}}
{{- end -}}
{{- .Release.Name -}}
{{- end -}}

{{/* The image of every component. */}}
{{- define "lvs-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Labels of every object; `component` is controller, agent or webhook. */}}
{{- define "lvs-operator.labels" -}}
{{ include "lvs-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels that select a component's pods (never change them: selectors are immutable). */}}
{{- define "lvs-operator.selectorLabels" -}}
app.kubernetes.io/name: lvs-operator
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The names shared by several templates. */}}
{{- define "lvs-operator.webhookService" -}}{{ include "lvs-operator.name" . }}-webhook{{- end -}}
{{- define "lvs-operator.webhookSecret" -}}{{ include "lvs-operator.name" . }}-webhook-tls{{- end -}}
{{- define "lvs-operator.webhookConfiguration" -}}{{ include "lvs-operator.name" . }}-realserver{{- end -}}
{{- define "lvs-operator.validatingWebhookConfiguration" -}}{{ include "lvs-operator.name" . }}-virtualservers{{- end -}}
{{- define "lvs-operator.lease" -}}{{ include "lvs-operator.name" . }}-controller{{- end -}}
