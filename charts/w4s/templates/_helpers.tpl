{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "w4s.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, plus the chart name unless the release already holds it. */}}
{{- define "w4s.fullname" -}}
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

{{- define "w4s.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "w4s.labels" -}}
helm.sh/chart: {{ include "w4s.chart" . }}
{{ include "w4s.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "w4s.selectorLabels" -}}
app.kubernetes.io/name: {{ include "w4s.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "w4s.serveSelectorLabels" -}}
{{ include "w4s.selectorLabels" . }}
app.kubernetes.io/component: serve
{{- end }}

{{- define "w4s.mlflowSelectorLabels" -}}
{{ include "w4s.selectorLabels" . }}
app.kubernetes.io/component: mlflow
{{- end }}

{{- define "w4s.scheduleSelectorLabels" -}}
{{ include "w4s.selectorLabels" . }}
app.kubernetes.io/component: schedule
{{- end }}

{{- define "w4s.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "w4s.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: registry/repository:tag, or @digest when a digest is set. */}}
{{- define "w4s.imageRef" -}}
{{- $img := .image -}}
{{- $repo := ternary (printf "%s/%s" $img.registry $img.repository) $img.repository (ne (default "" $img.registry) "") -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .appVersion $img.tag | toString) -}}
{{- end -}}
{{- end }}

{{- define "w4s.image" -}}
{{- include "w4s.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) -}}
{{- end }}

{{/* The secret that holds the executor key (and the meta-agent key). */}}
{{- define "w4s.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "w4s.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{/* The secret that holds the client keys (one a line) that callers of the endpoint present. */}}
{{- define "w4s.clientKeysSecretName" -}}
{{- default (printf "%s-client-keys" (include "w4s.fullname" .)) .Values.clientKeys.existingSecret }}
{{- end }}

{{- define "w4s.mlflowFullname" -}}
{{- printf "%s-mlflow" (include "w4s.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The MLflow tracking URI the pods get, when it is not read from a secret. */}}
{{- define "w4s.mlflowTrackingUri" -}}
{{- if .Values.mlflow.server.enabled -}}
{{- printf "http://%s.%s.svc:%d" (include "w4s.mlflowFullname" .) .Release.Namespace (int .Values.mlflow.server.service.port) -}}
{{- else -}}
{{- .Values.mlflow.trackingUri -}}
{{- end -}}
{{- end }}

{{/* The environment variables for MLflow (tracking URI and S3 artifact credentials) that w4s pods get. */}}
{{- define "w4s.mlflowEnv" -}}
{{- if and (not .Values.mlflow.server.enabled) .Values.mlflow.existingSecret }}
- name: MLFLOW_TRACKING_URI
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mlflow.existingSecret }}
      key: {{ .Values.mlflow.existingSecretKeys.trackingUri }}
- name: MLFLOW_S3_ENDPOINT_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mlflow.existingSecret }}
      key: {{ .Values.mlflow.existingSecretKeys.s3EndpointUrl }}
      optional: true
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mlflow.existingSecret }}
      key: {{ .Values.mlflow.existingSecretKeys.awsAccessKeyId }}
      optional: true
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.mlflow.existingSecret }}
      key: {{ .Values.mlflow.existingSecretKeys.awsSecretAccessKey }}
      optional: true
{{- else if (include "w4s.mlflowTrackingUri" .) }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "w4s.mlflowTrackingUri" . | quote }}
{{- end }}
{{- end }}

{{/* The serve and sandbox-doctor containers' securityContext: serve.securityContext, plus procMount
Unmasked when sandbox.procMount asks for it (bubblewrap mounts a fresh /proc per job). */}}
{{- define "w4s.serveSecurityContext" -}}
{{ toYaml .Values.serve.securityContext }}
{{- if eq .Values.sandbox.procMount "Unmasked" }}
procMount: Unmasked
{{- end }}
{{- end }}

{{/* Fails unless the port of .url (explicit, else 443 for https and 80 for http) is in .ports: a
NetworkPolicy that opens 443 to an executor on :8000 would cut serve off without a word. */}}
{{- define "w4s.checkUrlPort" -}}
{{- $u := urlParse .url }}
{{- $hostport := splitList ":" $u.host }}
{{- $port := ternary (last $hostport) (ternary "443" "80" (eq $u.scheme "https")) (gt (len $hostport) 1) }}
{{- $open := list }}
{{- range .ports }}{{ $open = append $open (toString (int .)) }}{{ end }}
{{- if not (has $port $open) }}
{{- fail (printf "w4s: %s %s is on port %s, which %s (%s) does not open" .what .url $port .key (join ", " $open)) }}
{{- end }}
{{- end }}

{{/* Host headers the bundled MLflow server accepts: its Service's names (with and without a port),
localhost, private addresses (kubelet probes use the pod IP) and mlflow.server.allowedHosts. */}}
{{- define "w4s.mlflowAllowedHosts" -}}
{{- $svc := include "w4s.mlflowFullname" . }}
{{- $hosts := list }}
{{- range (list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) "localhost" "127.0.0.1") }}
{{- $hosts = append $hosts . }}
{{- $hosts = append $hosts (printf "%s:*" .) }}
{{- end }}
{{- $hosts = concat $hosts (list "10.*" "172.*" "192.168.*" "fd*") .Values.mlflow.server.allowedHosts }}
{{- join "," $hosts }}
{{- end }}
