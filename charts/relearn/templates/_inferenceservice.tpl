{{/*
InferenceService spec shared by the fraud and shadow services.
Call with (dict "ctx" $ "name" <isvc name> "modelUri" <uri> "canary" <percent or nil> "role" "fraud|shadow"
"raw" <true for KServe RawDeployment mode>).
Knative runs each component as one revision; only container-level securityContext fields are set
(pod-level ones need Knative's kubernetes.podspec-securitycontext flag).
*/}}
{{- define "relearn.isvc.containerSecurityContext" -}}
{{- $sc := deepCopy .Values.containerSecurityContext -}}
{{- $_ := set $sc "runAsNonRoot" true -}}
{{- $_ := set $sc "runAsUser" .Values.podSecurityContext.runAsUser -}}
{{- $_ := set $sc "runAsGroup" .Values.podSecurityContext.runAsGroup -}}
{{- $_ := set $sc "seccompProfile" (dict "type" "RuntimeDefault") -}}
{{- /* Knative < 1.17 rejects securityContext.privileged in a revision; false is the default anyway. */ -}}
{{- $_ := unset $sc "privileged" -}}
{{ toYaml $sc }}
{{- end -}}

{{- define "relearn.isvc.common" -}}
{{- $c := .component -}}
minReplicas: {{ $c.minReplicas }}
maxReplicas: {{ $c.maxReplicas }}
{{- if .raw }}
{{- /* RawDeployment scales with an HPA: cpu or memory only (validateScalingHPACompExtension). */}}
scaleMetric: cpu
scaleTarget: 80
{{- else }}
scaleMetric: {{ $c.scaleMetric }}
scaleTarget: {{ $c.scaleTarget }}
{{- if gt (int $c.containerConcurrency) 0 }}
containerConcurrency: {{ $c.containerConcurrency }}
{{- end }}
{{- end }}
timeout: {{ $c.timeout }}
{{- /* A server stops within its pod's termination grace period: the listeners' grace, then (predictor) the
payload log's drain. Knative sets the period from the revision timeout and rejects the field itself
(deploy.go: TerminationGracePeriodSeconds = rev.Spec.TimeoutSeconds, default 300); RawDeployment pods get the
same rule from the chart, so one value means the same in both modes. */}}
{{- $period := ternary $c.timeout (ternary 30 300 (default false .raw)) (gt (int $c.timeout) 0) }}
{{- if and .raw (gt (int $c.timeout) 0) }}
terminationGracePeriodSeconds: {{ $c.timeout }}
{{- end }}
{{- $v := .ctx.Values }}
{{- $l := $v.fraud.logger }}
{{- $drain := ternary $l.drainSeconds 0 (and (eq .kind "predictor") $v.driftDetector.enabled $l.enabled (eq $l.via "relearn")) }}
{{- if ge (addf $v.fraud.graceSeconds $drain) (float64 $period) }}
{{- fail (printf "fraud.graceSeconds (%v) + fraud.logger.drainSeconds (%v) must be below fraud.%s.timeout (%v), the %s pod's termination grace period: Kubernetes kills what is still draining" $v.fraud.graceSeconds $drain .kind $period .kind) }}
{{- end }}
{{- if ne .canary nil }}
canaryTrafficPercent: {{ .canary }}
{{- end }}
labels:
  relearn.io/serving: "true"
  relearn.io/role: {{ .role }}
  {{- include "relearn.selectorLabels" (dict "ctx" .ctx "component" (printf "%s-%s" .role .kind)) | nindent 2 }}
automountServiceAccountToken: false
{{- with .ctx.Values.images.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
Env of a server; the payload-logger settings only for the predictor (.logs): it logs each inference with
the transaction ids the transformer passes on, so the detector pairs one request/response per ce-id.
*/}}
{{- define "relearn.isvc.env" -}}
{{- $p := .prefix -}}
- name: {{ $p }}MODEL_NAME
  value: {{ .ctx.Values.fraud.modelName | quote }}
- name: {{ $p }}GRACE_SECONDS
  value: {{ .ctx.Values.fraud.graceSeconds | quote }}
{{- if .logs }}
- name: {{ $p }}INFERENCE_SERVICE
  value: {{ .name | quote }}
- name: {{ $p }}NAMESPACE
  value: {{ .ctx.Release.Namespace | quote }}
- name: {{ $p }}ENDPOINT
  value: {{ ternary "default" "canary" (eq .canary nil) }}
- name: {{ $p }}LOG_SINK_URL
  value: {{ ternary (include "relearn.drift.sinkUrl" .ctx) "" (and .ctx.Values.driftDetector.enabled .ctx.Values.fraud.logger.enabled (eq .ctx.Values.fraud.logger.via "relearn")) | quote }}
{{- $l := .ctx.Values.fraud.logger }}
- name: {{ $p }}LOG_BATCH_SIZE
  value: {{ $l.batchSize | quote }}
- name: {{ $p }}LOG_QUEUE_SIZE
  value: {{ $l.queueSize | quote }}
- name: {{ $p }}LOG_WHEN_FULL
  value: {{ $l.whenFull | quote }}
- name: {{ $p }}LOG_BLOCK_SECONDS
  value: {{ $l.blockSeconds | quote }}
- name: {{ $p }}LOG_DRAIN_SECONDS
  value: {{ $l.drainSeconds | quote }}
{{- end }}
{{- end -}}

{{- define "relearn.isvc.spec" -}}
{{- $v := .ctx.Values -}}
{{- $grpcOut := eq $v.fraud.exposedProtocol "h2c" -}}
predictor:
  {{- include "relearn.isvc.common" (dict "ctx" .ctx "component" $v.fraud.predictor "canary" .canary "role" .role "kind" "predictor" "raw" .raw) | nindent 2 }}
  {{- if and $v.driftDetector.enabled $v.fraud.logger.enabled (eq $v.fraud.logger.via "kserve") }}
  logger:
    mode: {{ $v.fraud.logger.mode }}
    url: {{ include "relearn.drift.sinkUrl" .ctx }}
  {{- end }}
  containers:
    - name: kserve-container
      image: {{ include "relearn.image" (dict "ctx" .ctx "image" $v.images.predictor) }}
      imagePullPolicy: {{ $v.images.pullPolicy }}
      command: [python, -m, relearn.serving.predictor]
      envFrom:
        {{- include "relearn.commonEnvFrom" .ctx | nindent 8 }}
      env:
        - name: RELEARN_PREDICTOR_MODEL_URI
          value: {{ .modelUri | quote }}
        - name: RELEARN_PREDICTOR_HOST
          value: 0.0.0.0
        {{- include "relearn.isvc.env" (dict "ctx" .ctx "prefix" "RELEARN_PREDICTOR_" "name" .name "canary" .canary "logs" true) | nindent 8 }}
        {{- with $v.fraud.predictor.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        # The transformer calls the predictor over v2 gRPC: Knative routes HTTP/2 cleartext to 8081.
        - name: h2c
          containerPort: 8081
          protocol: TCP
      readinessProbe:
        tcpSocket:
          port: 8081
      resources:
        {{- toYaml $v.fraud.predictor.resources | nindent 8 }}
      securityContext:
        {{- include "relearn.isvc.containerSecurityContext" .ctx | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    {{- include "relearn.tmpVolume" .ctx | nindent 4 }}
transformer:
  {{- include "relearn.isvc.common" (dict "ctx" .ctx "component" $v.fraud.transformer "canary" .canary "role" .role "kind" "transformer" "raw" .raw) | nindent 2 }}
  containers:
    - name: kserve-container
      image: {{ include "relearn.image" (dict "ctx" .ctx "image" $v.images.transformer) }}
      imagePullPolicy: {{ $v.images.pullPolicy }}
      command: [python, -m, relearn.serving.transformer]
      # KServe appends --model_name <isvc name>, --predictor_host <isvc>-predictor.<ns>, --http_port 8080 and
      # --workers <containerConcurrency> unless the args already hold them (CustomTransformer.GetContainer,
      # pkg/apis/serving/v1beta1/transformer_custom.go): the model name must stay the same for the shadow
      # InferenceService, and one process per pod (replicas scale, not workers).
      args:
        - --model_name={{ .ctx.Values.fraud.modelName }}
        - --workers=1
      envFrom:
        {{- include "relearn.commonEnvFrom" .ctx | nindent 8 }}
      env:
        - name: RELEARN_TRANSFORMER_HOST
          value: 0.0.0.0
        {{- if ne $v.fraud.threshold nil }}
        - name: RELEARN_TRANSFORMER_THRESHOLD
          value: {{ $v.fraud.threshold | quote }}
        {{- end }}
        - name: RELEARN_TRANSFORMER_FEATURE_FALLBACK
          value: {{ $v.fraud.featureFallback | quote }}
        # Entity features from the streaming state, which each scored transaction updates (RELEARN_STATE_*;
        # the transformer opens no Feast store). The shadow and canary share it: updates count once per id.
        {{- include "relearn.state.env" .ctx | nindent 8 }}
        {{- include "relearn.isvc.env" (dict "ctx" .ctx "prefix" "RELEARN_TRANSFORMER_" "name" .name "canary" .canary "logs" false) | nindent 8 }}
        {{- if eq .role "fraud" }}{{ with include "relearn.experiments.transformerEnv" .ctx | trim }}{{ . | nindent 8 }}{{ end }}{{ end }}
        {{- with $v.fraud.transformer.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        {{- if $grpcOut }}
        - name: h2c
          containerPort: 8081
          protocol: TCP
        {{- else }}
        - name: http1
          containerPort: 8080
          protocol: TCP
        {{- end }}
      readinessProbe:
        {{- if $grpcOut }}
        tcpSocket:
          port: 8081
        {{- else }}
        httpGet:
          path: /v2/health/ready
          port: 8080
        {{- end }}
      resources:
        {{- toYaml $v.fraud.transformer.resources | nindent 8 }}
      securityContext:
        {{- include "relearn.isvc.containerSecurityContext" .ctx | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if eq .role "fraud" }}{{ with include "relearn.experiments.transformerMounts" .ctx | trim }}{{ . | nindent 8 }}{{ end }}{{ end }}
  volumes:
    {{- include "relearn.tmpVolume" .ctx | nindent 4 }}
    {{- if eq .role "fraud" }}{{ with include "relearn.experiments.transformerVolumes" .ctx | trim }}{{ . | nindent 4 }}{{ end }}{{ end }}
{{- if and (eq .role "fraud") $v.fraud.explainer.enabled }}
{{- /* KServe routes /v1/models/<m>:explain to the explainer (its own pods, the predictor's image). */}}
explainer:
  {{- include "relearn.isvc.common" (dict "ctx" .ctx "component" $v.fraud.explainer "canary" .canary "role" .role "kind" "explainer" "raw" .raw) | nindent 2 }}
  containers:
    - name: kserve-container
      image: {{ include "relearn.image" (dict "ctx" .ctx "image" $v.images.predictor) }}
      imagePullPolicy: {{ $v.images.pullPolicy }}
      command: [python, -m, relearn.serving.explainer]
      # KServe appends --model_name <isvc name>, --predictor_host and --http_port 8080 unless the args hold
      # them (CustomExplainer.GetContainer, pkg/apis/serving/v1beta1/explainer_custom.go): the URLs keep the
      # model's name; the explainer scores with its own copy of the model, so the predictor host is unused.
      args:
        - --model_name={{ $v.fraud.modelName }}
        - --workers=1
      envFrom:
        {{- include "relearn.commonEnvFrom" .ctx | nindent 8 }}
      env:
        - name: RELEARN_EXPLAINER_MODEL_URI
          value: {{ .modelUri | quote }}
        - name: RELEARN_EXPLAINER_HOST
          value: 0.0.0.0
        {{- if ne $v.fraud.explainer.top nil }}
        - name: RELEARN_EXPLAINER_TOP
          value: {{ $v.fraud.explainer.top | quote }}
        {{- end }}
        # Raw transactions are explained with the entity features the streaming state holds (read only).
        {{- include "relearn.state.env" .ctx | nindent 8 }}
        {{- include "relearn.isvc.env" (dict "ctx" .ctx "prefix" "RELEARN_EXPLAINER_" "name" .name "canary" .canary "logs" false) | nindent 8 }}
        {{- with $v.fraud.explainer.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http1
          containerPort: 8080
          protocol: TCP
      readinessProbe:
        httpGet:
          path: /v2/health/ready
          port: 8080
      resources:
        {{- toYaml $v.fraud.explainer.resources | nindent 8 }}
      securityContext:
        {{- include "relearn.isvc.containerSecurityContext" .ctx | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    {{- include "relearn.tmpVolume" .ctx | nindent 4 }}
{{- end }}
{{- end -}}
