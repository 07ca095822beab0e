{{- define "trainguard.name" -}}trainguard{{- end -}}

{{- define "trainguard.labels" -}}
app.kubernetes.io/name: trainguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "trainguard.selectorLabels" -}}
app.kubernetes.io/name: trainguard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The operator image: by digest when one is given (the default), else by tag. */}}
{{- define "trainguard.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The admission webhooks' own pods (Deployment trainguard-webhook): a name of their own, so that
the operator Deployment's selector (name trainguard) never matches them. */}}
{{- define "trainguard.webhookSelectorLabels" -}}
app.kubernetes.io/name: trainguard-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Whether the chart writes the webhook configurations (and runs the admission Deployment). */}}
{{- define "trainguard.chartWebhooks" -}}
{{- if eq .Values.webhooks.managedBy "chart" }}true{{ end -}}
{{- end -}}

{{/* The hardened pod and container security contexts every trainguard pod runs with. */}}
{{- define "trainguard.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end -}}
{{- define "trainguard.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- /* Each webhook's clientConfig: the Service, or webhooks.url for an operator outside. */}}
{{- define "trainguard.webhookClient" -}}
{{- $root := index . 0 }}{{ $path := index . 1 }}{{ $caBundle := index . 2 -}}
{{- if $root.Values.webhooks.url -}}
url: {{ printf "%s/%s" (trimSuffix "/" $root.Values.webhooks.url) $path | quote }}
{{- else -}}
service:
  namespace: {{ $root.Release.Namespace }}
  name: trainguard-webhook
  port: {{ $root.Values.operator.webhookPort }}
  path: /{{ $path }}
{{- end }}
{{- with $caBundle }}
caBundle: {{ . }}
{{- end }}
{{- end -}}
{{- define "trainguard.webhookCommon" -}}
admissionReviewVersions: [v1]
sideEffects: None
# Fail closed: a request no replica answers is refused, never admitted unchecked.
failurePolicy: Fail
matchPolicy: Equivalent
timeoutSeconds: {{ .Values.webhooks.timeoutSeconds }}
{{- end -}}
{{- define "trainguard.tenantNamespaces" -}}
namespaceSelector:
  matchExpressions: [{key: trainguard.dev/tenant, operator: Exists}]
{{- end -}}
