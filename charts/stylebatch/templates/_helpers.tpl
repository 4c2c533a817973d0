{{/* Name of the release's objects: the release name, with the chart name unless it already has it. */}}
{{- define "stylebatch.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "stylebatch.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stylebatch.labels" -}}
{{ include "stylebatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: stylebatch
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "stylebatch.operatorSelectorLabels" -}}
{{ include "stylebatch.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "stylebatch.operatorServiceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "stylebatch.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The job pods' ServiceAccount; "" (the namespace's default) when not created and not named. */}}
{{- define "stylebatch.jobServiceAccount" -}}
{{- if .Values.jobs.serviceAccount.create -}}
{{- default (printf "%s-job" (include "stylebatch.fullname" .)) .Values.jobs.serviceAccount.name -}}
{{- else if and (eq .Values.storage.auth "workloadIdentity") (not .Values.jobs.serviceAccount.name) -}}
{{- fail "jobs.serviceAccount.name is required with storage.auth=workloadIdentity when jobs.serviceAccount.create is false" -}}
{{- else -}}
{{- .Values.jobs.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag, the tag defaulting to the chart's appVersion; registry/repository@digest
     when the image names a digest (pinned: the tag is then ignored). Call with (list $ .Values.x.image). */}}
{{- define "stylebatch.image" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $ref := printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- if $image.digest -}}
{{- $ref = printf "%s@%s" $image.repository $image.digest -}}
{{- end -}}
{{- if $root.Values.imageRegistry -}}
{{- printf "%s/%s" (trimSuffix "/" $root.Values.imageRegistry) $ref -}}
{{- else -}}
{{- $ref -}}
{{- end -}}
{{- end -}}

{{/* Namespaces the job ServiceAccount lives in: the release namespace and every watched one. */}}
{{- define "stylebatch.jobNamespaces" -}}
{{- prepend .Values.operator.watchNamespaces .Release.Namespace | uniq | toJson -}}
{{- end -}}

{{/* imagePullSecrets as a JSON list of {"name": ...}, the shape of a pod spec's field. */}}
{{- define "stylebatch.imagePullSecrets" -}}
{{- $secrets := list -}}
{{- range .Values.imagePullSecrets -}}
{{- $secrets = append $secrets (dict "name" .) -}}
{{- end -}}
{{- toJson $secrets -}}
{{- end -}}

{{/* The operator's job defaults (STYLEBATCH_JOB_DEFAULTS), as YAML: what a StyleTransferJob gets for
     each spec field it leaves out, plus the job pods' serviceAccountName and the pods no spec field
     sizes. Empty values are left out (a job then has none, rather than an empty one). */}}
{{- define "stylebatch.jobDefaults" -}}
{{- $jobs := .Values.jobs -}}
{{- $d := dict "image" (include "stylebatch.image" (list . $jobs.image)) "imagePullPolicy" .Values.imagePullPolicy
     "workers" (int $jobs.workers) "gpusPerWorker" (int $jobs.gpusPerWorker)
     "progressTimeoutSeconds" (int $jobs.progressTimeoutSeconds) -}}
{{- with $jobs.resources }}{{ $_ := set $d "resources" (include "stylebatch.quantities" . | fromJson) }}{{ end -}}
{{- with .Values.imagePullSecrets }}{{ $_ := set $d "imagePullSecrets" (include "stylebatch.imagePullSecrets" $ | fromJsonArray) }}{{ end -}}
{{- with $jobs.queueName }}{{ $_ := set $d "queueName" . }}{{ end -}}
{{- $scheduling := dict -}}
{{- with $jobs.nodeSelector }}{{ $_ := set $scheduling "nodeSelector" . }}{{ end -}}
{{- with $jobs.tolerations }}{{ $_ := set $scheduling "tolerations" . }}{{ end -}}
{{- with $scheduling }}{{ $_ := set $d "scheduling" . }}{{ end -}}
{{- $account := include "stylebatch.jobServiceAccount" . -}}
{{- with $account }}{{ $_ := set $d "serviceAccountName" . }}{{ end -}}
{{- if eq .Values.storage.auth "workloadIdentity" -}}
{{- $_ := set $d "storage" (dict "serviceAccountName" $account "accountName" .Values.storage.account) -}}
{{- else if .Values.storage.existingSecret -}}
{{- $_ := set $d "storage" (dict "secretName" .Values.storage.existingSecret) -}}
{{- end -}}
{{- $_ := set $d "pods" (dict "stageResources" (include "stylebatch.quantities" $jobs.stageResources | fromJson)
     "launcherResources" (include "stylebatch.quantities" $jobs.launcherResources | fromJson)
     "scratchSize" (toString $jobs.scratchSize) "shmSize" (toString $jobs.shmSize)) -}}
{{- toYaml $d -}}
{{- end -}}

{{/* {requests: {...}, limits: {...}} with every quantity a string (cpu: 4 -> "4"), as JSON. */}}
{{- define "stylebatch.quantities" -}}
{{- $out := dict -}}
{{- range $kind, $quantities := . -}}
{{- $strings := dict -}}
{{- range $name, $q := $quantities }}{{ if not (kindIs "invalid" $q) }}{{ $_ := set $strings $name (toString $q) }}{{ end }}{{ end -}}
{{- $_ := set $out $kind $strings -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The pods of every StyleTransferJob's children: the labels the operator puts on them
     (stylebatch_operator.names.child_labels). */}}
{{- define "stylebatch.jobPodSelector" -}}
matchLabels:
  app.kubernetes.io/managed-by: stylebatch
matchExpressions:
  - {key: stylebatch.io/job, operator: Exists}
{{- end -}}

{{/* The pods of the stylize step's MPIJobs: its launcher and its workers. */}}
{{- define "stylebatch.mpiPodSelector" -}}
matchLabels:
  app.kubernetes.io/managed-by: stylebatch
  stylebatch.io/stage: stylize
{{- end -}}
