{{/*
Redis Deployment (metadata and spec) shared by the primary and its read replicas.
Call with (dict "ctx" $ "name" <object name> "component" "redis|redis-replica" "replicas" N
"args" <extra redis-server args> "ready" <readiness shell check> "data" <the /data volume, YAML>).
*/}}
{{- define "relearn.redis.workload" -}}
{{- $r := .ctx.Values.feast.redis -}}
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "relearn.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
  annotations:
    checkov.io/skip1: "CKV_K8S_43=images are pinned by tag; skaffold deploys tag@digest, values may pin digests"
    checkov.io/skip2: "CKV_K8S_15=IfNotPresent with immutable tags/digests; Always would make every restart depend on the registry"
    checkov.io/skip3: "CKV_K8S_40=the Debian redis image owns its paths as uid 999; no host paths are mounted"
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
