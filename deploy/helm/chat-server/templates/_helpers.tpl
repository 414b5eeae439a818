{{/* Name of the chart, and of every object unless the release name already contains it. */}}
{{- define "chat-server.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chat-server.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: stable across upgrades. */}}
{{- define "chat-server.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-server.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chat-server.labels" -}}
{{ include "chat-server.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: chat
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image: by digest when one is given, else by tag (default: appVersion). */}}
{{- define "chat-server.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The Secret with JWT_SECRET, DATABASE_URL, REDIS_URL. */}}
{{- define "chat-server.secretName" -}}
{{- default (include "chat-server.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* Environment of the server (and, through the ConfigMap, of its settings). */}}
{{- define "chat-server.configData" -}}
BIND_ADDR: {{ printf "0.0.0.0:%d" (int .Values.ports.http) | quote }}
INTERNAL_ADDR: {{ printf "0.0.0.0:%d" (int .Values.ports.internal) | quote }}
SHUTDOWN_GRACE_SECS: {{ .Values.drain.shutdownGraceSeconds | toString | quote }}
{{- range $k, $v := .Values.config }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/* Pod and container security settings shared by the server and the migration Job. */}}
{{- define "chat-server.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "chat-server.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
