{{/* Streaming state (relearn.features.state) and its feature feed: object names. */}}
{{- define "relearn.state.redis.name" -}}{{ include "relearn.fullname" . }}-state-redis{{- end -}}
{{- define "relearn.feed.name" -}}{{ include "relearn.fullname" . }}-feature-feed{{- end -}}

{{/*
RELEARN_STATE_REDIS_URLS: streamingState.shards, else the chart's Redis (database 0: the server is the
state's own). The order of the shards places the entities (CRC32 of the key modulo their number).
*/}}
{{- define "relearn.state.urls" -}}
{{- $s := .Values.streamingState -}}
{{- if $s.shards -}}
{{- join "," $s.shards -}}
{{- else -}}
redis://{{ include "relearn.state.redis.name" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ $s.redis.port }}/0
{{- end -}}
{{- end -}}

{{/*
The state's settings (relearn.features.state.StateSettings) as env var name: value, one definition for the
transformers, the feed (env) and the KFP run pods (relearn-pipeline-env), so all of them open one state.
*/}}
{{- define "relearn.state.settings" -}}
{{- $s := .Values.streamingState -}}
RELEARN_STATE_BACKEND: redis
RELEARN_STATE_REDIS_URLS: {{ include "relearn.state.urls" . | quote }}
RELEARN_STATE_CLOCK: {{ $s.clock | quote }}
RELEARN_STATE_LATENESS_SECONDS: {{ $s.latenessSeconds | quote }}
RELEARN_STATE_MAX_FUTURE_SECONDS: {{ $s.maxFutureSeconds | quote }}
{{- end -}}

{{/* env of a state client container: the settings, and with feast.redis.auth the password from its Secret. */}}
{{- define "relearn.state.env" -}}
{{- $env := list -}}
{{- range $name, $value := include "relearn.state.settings" . | fromYaml -}}
{{- $env = append $env (dict "name" $name "value" (toString $value)) -}}
{{- end -}}
{{ toYaml $env }}
{{- if include "relearn.redis.auth" . }}
{{ include "relearn.redis.passwordEnv" (dict "ctx" . "name" "RELEARN_STATE_REDIS_PASSWORD") }}
{{- end }}
{{- end -}}
