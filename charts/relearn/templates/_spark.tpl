{{/*
The Spark path's settings as env var name: value (relearn.data.spark_session.SparkSettings,
relearn.features.spark_application.SparkApplicationSettings) for the KFP run pods (relearn-pipeline-env):
the validate and features steps read them, and with spark.operator.enabled render their SparkApplication
from them. Every key always (empty when unset): the compiled pipeline maps each one (pipelines/train.py
PIPELINE_ENV_KEYS), and a key missing from the ConfigMap would keep the run pods from starting. The object
store's keys never appear here: the application takes the Secret by envFrom.
*/}}
{{- define "relearn.spark.settings" -}}
{{- $s := .Values.spark -}}
RELEARN_SPARK_ENGINE: {{ $s.engine | quote }}
RELEARN_SPARK_AUTO_ROWS: {{ $s.autoRows | int64 | quote }}
RELEARN_SPARK_SUBMIT: {{ ternary "operator" "local" $s.operator.enabled | quote }}
RELEARN_SPARK_APP_NAMESPACE: {{ .Values.kubeflow.runNamespace | quote }}
RELEARN_SPARK_APP_IMAGE: {{ $s.image | quote }}
RELEARN_SPARK_APP_SPARK_VERSION: {{ $s.sparkVersion | quote }}
RELEARN_SPARK_APP_SERVICE_ACCOUNT: {{ $s.serviceAccount | quote }}
RELEARN_SPARK_APP_DRIVER_CORES: {{ $s.driver.cores | quote }}
RELEARN_SPARK_APP_DRIVER_MEMORY: {{ $s.driver.memory | quote }}
RELEARN_SPARK_APP_EXECUTORS: {{ $s.executor.instances | quote }}
RELEARN_SPARK_APP_EXECUTOR_CORES: {{ $s.executor.cores | quote }}
RELEARN_SPARK_APP_EXECUTOR_MEMORY: {{ $s.executor.memory | quote }}
RELEARN_SPARK_APP_SHUFFLE_PARTITIONS: {{ $s.shufflePartitions | quote }}
RELEARN_SPARK_APP_TIMEOUT_SECONDS: {{ $s.timeoutSeconds | quote }}
RELEARN_SPARK_APP_LAKE_URI: {{ $s.lake.uri | quote }}
RELEARN_SPARK_APP_S3_ENDPOINT: {{ $s.lake.endpoint | quote }}
RELEARN_SPARK_APP_S3_SECRET: {{ $s.lake.credentialsSecret | quote }}
{{- end -}}
