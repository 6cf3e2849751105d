{{/* Feast registry server (feast serve_registry): object name. */}}
{{- define "relearn.feast.registryServer.name" -}}{{ include "relearn.fullname" . }}-feast-registry{{- end -}}

{{/*
RELEARN_FEAST_REGISTRY of every Feast client (transformers, KFP run pods in any namespace): the registry
server's in-cluster gRPC address (relearn.features.store: grpc://<host>:<port> = Feast's remote registry).
*/}}
{{- define "relearn.feast.registryAddress" -}}
grpc://{{ include "relearn.feast.registryServer.name" . }}.{{ .Release.Namespace }}.svc.cluster.local:{{ .Values.feast.registryServer.port }}
{{- end -}}

{{/* Where the registry server keeps the registry: a file on its own PVC, or feast.registryUri. */}}
{{- define "relearn.feast.registryPath" -}}
{{- default "/data/registry.db" .Values.feast.registryUri -}}
{{- end -}}
