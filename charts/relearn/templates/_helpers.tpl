{{/* Chart name. */}}
{{- define "relearn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name prefix of every object. */}}
{{- define "relearn.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<chart>-<version>" for helm.sh/chart. */}}
{{- define "relearn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "name"). */}}
{{- define "relearn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relearn.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The one label helper: every object's labels; call with (dict "ctx" $ "component" "name"). */}}
{{- define "relearn.labels" -}}
helm.sh/chart: {{ include "relearn.chart" .ctx }}
{{ include "relearn.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: relearn
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of InferenceServices: KServe copies them into each revision's pod template, so they leave out
what changes with every chart release (helm.sh/chart, app.kubernetes.io/version). */}}
{{- define "relearn.revisionLabels" -}}
{{ include "relearn.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: relearn
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Image reference; call with (dict "ctx" $ "image" .Values.images.x). */}}
{{- define "relearn.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* Container securityContext (non-root, read-only root fs, no privilege escalation, drop ALL). */}}
{{- define "relearn.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* Pod securityContext; call with (dict "ctx" $ "uid" 999) to override the uid. */}}
{{- define "relearn.podSecurityContext" -}}
{{- $psc := deepCopy .ctx.Values.podSecurityContext -}}
{{- if .uid -}}
{{- $_ := set $psc "runAsUser" .uid -}}
{{- $_ := set $psc "runAsGroup" .uid -}}
{{- $_ := set $psc "fsGroup" .uid -}}
{{- end -}}
{{ toYaml $psc }}
{{- end -}}

{{/* Object names. */}}
{{- define "relearn.mlflow.name" -}}{{ include "relearn.fullname" . }}-mlflow{{- end -}}
{{- define "relearn.postgres.name" -}}{{ include "relearn.fullname" . }}-postgres{{- end -}}
{{- define "relearn.redis.name" -}}{{ include "relearn.fullname" . }}-redis{{- end -}}
{{- define "relearn.redis.replica.name" -}}{{ include "relearn.fullname" . }}-redis-replica{{- end -}}
{{- define "relearn.feast.name" -}}{{ include "relearn.fullname" . }}-feast{{- end -}}
{{- define "relearn.drift.name" -}}{{ include "relearn.fullname" . }}-drift-detector{{- end -}}
{{- define "relearn.drift.ingest.name" -}}{{ include "relearn.fullname" . }}-drift-ingest{{- end -}}
{{- define "relearn.rollout.name" -}}{{ include "relearn.fullname" . }}-rollout{{- end -}}

{{/* MLflow tracking URI seen by every pod. */}}
{{- define "relearn.mlflow.uri" -}}
{{- if .Values.mlflow.enabled -}}
http://{{ include "relearn.mlflow.name" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.mlflow.port }}
{{- else -}}
{{- required "mlflow.externalTrackingUri is required when mlflow.enabled is false" .Values.mlflow.externalTrackingUri -}}
{{- end -}}
{{- end -}}

{{/* Redis connection string of the Feast online store. */}}
{{- define "relearn.redis.connection" -}}
{{- if .Values.feast.redis.enabled -}}
{{ include "relearn.redis.name" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.feast.redis.port }}
{{- else -}}
{{- required "feast.redis.externalConnection is required when feast.redis.enabled is false" .Values.feast.redis.externalConnection -}}
{{- end -}}
{{- end -}}

{{/* The drift detector (the monitor): labels, status, backtests, rewards. */}}
{{- define "relearn.drift.url" -}}
http://{{ include "relearn.drift.name" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.driftDetector.port }}/
{{- end -}}

{{/* The payload logger's sink: the ingest replicas when driftDetector.ingest.enabled, else the detector.
Only the logger's events move; every other caller keeps relearn.drift.url (those routes are the monitor's). */}}
{{- define "relearn.drift.sinkUrl" -}}
{{- if .Values.driftDetector.ingest.enabled -}}
http://{{ include "relearn.drift.ingest.name" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.driftDetector.port }}/
{{- else -}}
{{ include "relearn.drift.url" . }}
{{- end -}}
{{- end -}}

{{/* Host of the PostgreSQL MLflow's store uses: the chart's, or mlflow.postgres.host; empty: none. */}}
{{- define "relearn.postgres.host" -}}
{{- if and .Values.mlflow.enabled .Values.mlflow.postgres.enabled -}}
{{ include "relearn.postgres.name" . }}
{{- else -}}
{{ .Values.mlflow.postgres.host }}
{{- end -}}
{{- end -}}

{{/* Env of a detector process on the shared log of the ingest replicas (MLflow's PostgreSQL, its database
and credentials). Like MLflow, the user and password stay out of the URL: libpq reads PGUSER/PGPASSWORD. */}}
{{- define "relearn.drift.sharedLogEnv" -}}
{{- $pg := .Values.mlflow.postgres -}}
{{- $host := include "relearn.postgres.host" . -}}
{{- if not $host -}}
{{- fail "driftDetector.ingest.enabled needs PostgreSQL for the replicas' shared log: the chart's (mlflow.enabled and mlflow.postgres.enabled) or an external one (mlflow.postgres.host)" -}}
{{- end -}}
- name: RELEARN_DRIFT_SHARED_LOG_URL
  value: {{ printf "postgresql://%s:%v/%s" $host $pg.port $pg.database | quote }}
- name: PGUSER
  valueFrom:
    secretKeyRef:
      name: {{ $pg.existingSecret }}
      key: {{ $pg.userKey }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $pg.existingSecret }}
      key: {{ $pg.passwordKey }}
{{- end -}}

{{/* envFrom of the shared settings ConfigMap. */}}
{{- define "relearn.commonEnvFrom" -}}
- configMapRef:
    name: {{ include "relearn.fullname" . }}-settings
{{- end -}}

{{/* Volumes every relearn pod needs with a read-only root fs: /tmp. */}}
{{- define "relearn.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- end -}}

{{/* NetworkPolicy peers for a list of namespace names. */}}
{{- define "relearn.namespacePeers" -}}
{{- range . }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
{{- end }}
{{- end -}}
