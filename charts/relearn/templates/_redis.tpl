{{/* Password auth of the chart's Redis and its clients: "true" when feast.redis.auth.existingSecret is set. */}}
{{- define "relearn.redis.auth" -}}
{{- if .Values.feast.redis.auth.existingSecret }}true{{ end -}}
{{- end -}}

{{/* An env var (name .name) holding the Redis password, from the Secret (never a value in the chart). */}}
{{- define "relearn.redis.passwordEnv" -}}
{{- $a := .ctx.Values.feast.redis.auth -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret | quote }}
      key: {{ $a.key | quote }}
{{- end -}}

{{/*
Redis Deployment (metadata and spec) shared by the Feast primary, its read replicas and the streaming state's
Redis. Call with (dict "ctx" $ "name" <object name> "component" "redis|redis-replica|state-redis" "replicas" N
"args" <extra redis-server args> "ready" <readiness shell check> "data" <the /data volume, YAML>
"values" <port, maxMemory, resources, runAsUser; default feast.redis>). Password auth is feast.redis.auth's.
*/}}
{{- define "relearn.redis.workload" -}}
{{- $r := .values | default .ctx.Values.feast.redis -}}
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "relearn.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
  annotations:
    checkov.io/skip1: "CKV_K8S_43=images are pinned by tag; skaffold deploys tag@digest, values may pin digests"
    checkov.io/skip2: "CKV_K8S_15=IfNotPresent with immutable tags/digests; Always would make every restart depend on the registry"
    checkov.io/skip3: "CKV_K8S_40=the Debian redis image owns its paths as uid 999; no host paths are mounted"
    {{- if include "relearn.redis.auth" .ctx }}
    checkov.io/skip4: "CKV_K8S_35=redis-cli reads the password from REDISCLI_AUTH only; the server gets it on stdin, never in argv"
    {{- end }}
spec:
  replicas: {{ .replicas }}
  strategy:
    type: Recreate
  selector:
    matchLabels:
      {{- include "relearn.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "relearn.labels" (dict "ctx" .ctx "component" .component) | nindent 8 }}
    spec:
      automountServiceAccountToken: false
      securityContext:
        {{- include "relearn.podSecurityContext" (dict "ctx" .ctx "uid" $r.runAsUser) | nindent 8 }}
      {{- with .ctx.Values.images.pullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      containers:
        - name: redis
          image: {{ include "relearn.image" (dict "ctx" .ctx "image" .ctx.Values.images.redis) }}
          imagePullPolicy: {{ .ctx.Values.images.pullPolicy }}
          {{- if include "relearn.redis.auth" .ctx }}
          # requirepass (and masterauth, for replication) reach redis-server as a config on stdin ("-" as first
          # argument: file, stdin, then the options below, src/server.c main, Redis 7.0 and 7.4): the password
          # is in no process's argv (/proc/<pid>/cmdline is world-readable) and in no file. The umask is the
          # image entrypoint's (docker-library/redis docker-entrypoint.sh), which this command replaces.
          command:
            - sh
            - -c
            - |
              set -eu
              umask 0077
              pw=$(printf '%s' "$REDISCLI_AUTH" | sed 's/[\\"]/\\&/g')
              exec redis-server - "$@" <<EOF
              requirepass "$pw"
              masterauth "$pw"
              EOF
            - redis-server
          # redis-cli (the readiness probe) authenticates with REDISCLI_AUTH.
          env:
            {{- include "relearn.redis.passwordEnv" (dict "ctx" .ctx "name" "REDISCLI_AUTH") | nindent 12 }}
          {{- end }}
          args:
            - --port
            - {{ $r.port | quote }}
            - --maxmemory
            - {{ $r.maxMemory | quote }}
            - --dir
            - /data
            {{- range .args }}
            - {{ . | quote }}
            {{- end }}
          ports:
            - name: redis
              containerPort: {{ $r.port }}
              protocol: TCP
          readinessProbe:
            exec:
              command: [sh, -c, {{ .ready | quote }}]
            periodSeconds: 10
          livenessProbe:
            tcpSocket:
              port: redis
            initialDelaySeconds: 10
            periodSeconds: 20
          resources:
            {{- toYaml $r.resources | nindent 12 }}
          securityContext:
            {{- include "relearn.containerSecurityContext" .ctx | nindent 12 }}
          volumeMounts:
            - name: data
              mountPath: /data
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: data
          {{- .data | nindent 10 }}
        {{- include "relearn.tmpVolume" .ctx | nindent 8 }}
{{- end -}}
