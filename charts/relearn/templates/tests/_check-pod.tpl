{{/*
metadata and spec of a helm test hook Pod (each tests/test-*.yaml file holds one Pod: its apiVersion and kind,
then this) running `python -m relearn.checks <args>` from the rollout image (it holds the relearn package; the
checks need nothing but the standard library). Command, args and env are complete in the Pod spec: nothing
comes from ConfigMaps or Secrets. Call with (dict "ctx" $ "check" "<name>" "weight" <n> "args" (list ...)).
*/}}
{{- define "relearn.tests.checkPod" -}}
{{- $v := .ctx.Values -}}
metadata:
  name: {{ include "relearn.fullname" .ctx }}-test-{{ .check }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "relearn.labels" (dict "ctx" .ctx "component" "helm-test") | nindent 4 }}
    relearn.io/check: {{ .check }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-weight: {{ .weight | quote }}
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
    # Helm >= 3.18 prints a failed check's JSON lines (a succeeded Pod is deleted; kubectl logs a failed one).
    helm.sh/hook-output-log-policy: hook-failed
    checkov.io/skip1: "CKV_K8S_43=images are pinned by tag; skaffold deploys tag@digest, values may pin digests"
    checkov.io/skip2: "CKV_K8S_15=IfNotPresent with immutable tags/digests; Always would make every test depend on the registry"
    checkov.io/skip3: "CKV_K8S_8=a helm test Pod runs its checks once and exits; there is nothing to keep alive"
    checkov.io/skip4: "CKV_K8S_9=a helm test Pod serves nothing; no Service routes to it, so readiness gates nothing"
    {{- with $v.tests.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    {{- include "relearn.podSecurityContext" (dict "ctx" .ctx) | nindent 4 }}
  {{- with $v.images.pullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  containers:
    - name: check
      image: {{ include "relearn.image" (dict "ctx" .ctx "image" $v.images.rollout) }}
      imagePullPolicy: {{ $v.images.pullPolicy }}
      command: [python, -m, relearn.checks]
      args:
        {{- range .args }}
        - {{ . | quote }}
        {{- end }}
        - {{ printf "--deadline-seconds=%v" $v.tests.deadlineSeconds | quote }}
      env:
        - name: PYTHONDONTWRITEBYTECODE
          value: "1"
      resources:
        {{- toYaml $v.tests.resources | nindent 8 }}
      securityContext:
        {{- include "relearn.containerSecurityContext" .ctx | nindent 8 }}
{{- end -}}
