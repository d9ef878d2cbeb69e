{{- define "keras-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keras-operator.labels" -}}
app.kubernetes.io/name: keras-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keras-operator.selector" -}}
app.kubernetes.io/name: keras-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keras-operator.serviceAccount" -}}
{{- default (include "keras-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* What the operator does in the namespaces it watches: exactly the calls in operator/kube.py and kopf's. */}}
{{- define "keras-operator.namespacedRules" -}}
# Both kinds are read from kopf's watches, and written to through /status only (kopf keeps no
# annotation or finalizer on them: its handlers are events and indexes). get: a KerasModelService reads
# the KerasTrainingJob it serves from at each resync instead of handling every training's every event.
- apiGroups: [kerasoperator.dev]
  resources: [kerastrainingjobs]
  verbs: [get, list, watch]
- apiGroups: [kerasoperator.dev]
  resources: [kerasmodelservices]
  verbs: [list, watch]
- apiGroups: [kerasoperator.dev]
  resources: [kerastrainingjobs/status, kerasmodelservices/status]
  verbs: [patch]
# Not a request the operator makes but a check on its creates: the Jobs, Deployments, Services and HPAs
# it creates name their resource as owner with blockOwnerDeletion: true, and where the
# OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift, many hardened clusters) setting
# that needs update on the owner's finalizers subresource.
- apiGroups: [kerasoperator.dev]
  resources: [kerastrainingjobs/finalizers, kerasmodelservices/finalizers]
  verbs: [update]
# delete: spec.runPolicy.ttlSecondsAfterFinished is honoured by the operator, once the result is recorded.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# list and watch: the model services' Deployments are indexed from a watch (their readiness drives status).
# delete: a canary's Deployment goes once it is promoted or rolled back.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, create, patch, delete]
{{- if eq .Values.canary.trafficSplit "httproute" }}
# A canary's traffic goes through an HTTPRoute to a Service per side; both go with the canary.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch, delete]
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, create, patch, delete]
{{- else }}
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
{{- end }}
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [pods/log, pods/proxy]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{/* The progress endpoint as training pods reach it. */}}
{{- define "keras-operator.progressURL" -}}
{{ ternary "https" "http" .Values.progress.tls }}://{{ include "keras-operator.fullname" . }}-progress.{{ .Release.Namespace }}.svc:{{ .Values.progress.port }}
{{- end }}
