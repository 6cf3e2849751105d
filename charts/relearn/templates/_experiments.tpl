{{/*
A/B experiments (issue 19). Each arm's model version is served by its own predictor-only InferenceService
(<fraud.name>-arm-<version>, RawDeployment: a plain Service <isvc>-predictor:80 the mesh can route to).
The fraud transformer assigns each row its sticky arm from the running experiment (the store, a ConfigMap
it mounts) and sends each arm's rows to the experiment router host marked x-relearn-arm; an Istio
VirtualService (gateways: mesh) sends each marked call to its arm's predictor. Unmarked calls keep going
to the fraud predictor (KServe canary untouched).
*/}}
{{- define "relearn.experiments.armName" -}}
{{- printf "%s-arm-%s" .ctx.Values.fraud.name (toString .version) -}}
{{- end -}}

{{- define "relearn.experiments.routerHost" -}}
{{- printf "%s-experiment.%s.svc.cluster.local" .Values.fraud.name .Release.Namespace -}}
{{- end -}}

{{- define "relearn.experiments.configMap" -}}
{{- printf "%s-experiments" .Values.fraud.name -}}
{{- end -}}

{{- define "relearn.experiments.mountPath" -}}
/etc/relearn/experiments
{{- end -}}

{{/* The fraud transformer's env: where the running experiment is and where arm-marked calls go. */}}
{{- define "relearn.experiments.transformerEnv" -}}
{{- if .Values.experiments.enabled }}
- name: RELEARN_EXPERIMENT_STORE
  value: {{ printf "%s/experiments.json" (include "relearn.experiments.mountPath" .) | quote }}
- name: RELEARN_TRANSFORMER_EXPERIMENT_HOST
  value: {{ printf "%s:80" (include "relearn.experiments.routerHost" .) | quote }}
{{- end }}
{{- end -}}

{{- define "relearn.experiments.transformerMounts" -}}
{{- if .Values.experiments.enabled }}
- name: experiments
  mountPath: {{ include "relearn.experiments.mountPath" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "relearn.experiments.transformerVolumes" -}}
{{- if .Values.experiments.enabled }}
# A ConfigMap volume is swapped atomically by the kubelet: every replica re-reads the whole store.
- name: experiments
  configMap:
    name: {{ include "relearn.experiments.configMap" . }}
{{- end }}
{{- end -}}

{{/* The bandits' update CronJob and its RBAC: with experiments, bandit.enabled and the drift detector. */}}
{{- define "relearn.experiments.banditUpdate" -}}
{{- if and .Values.experiments.enabled .Values.experiments.bandit.enabled .Values.driftDetector.enabled -}}
true
{{- end -}}
{{- end -}}
