{{/* Names ------------------------------------------------------------------------------------------------ */}}
{{- define "moeops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moeops.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "moeops.component.fullname" (dict "root" $ "component" "operator") */}}
{{- define "moeops.component.fullname" -}}
{{- printf "%s-%s" (include "moeops.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------------------- */}}
{{- define "moeops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: moeops
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "moeops.selectorLabels" . }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod template labels: the selector's, part-of, managed-by, commonLabels and the component's podLabels. Never the
chart's or the app's version: a chart bump alone would change every pod template and restart every pod. The selector
labels win over podLabels (a podLabel cannot detach a pod from its Deployment). */}}
{{- define "moeops.podLabels" -}}
{{- $labels := dict "app.kubernetes.io/part-of" "moeops" "app.kubernetes.io/managed-by" .root.Release.Service -}}
{{- $labels = mergeOverwrite $labels (.root.Values.commonLabels | default dict) ((.values).podLabels | default dict) -}}
{{- $labels = mergeOverwrite $labels (include "moeops.selectorLabels" . | fromYaml) -}}
{{- toYaml $labels -}}
{{- end -}}

{{/* The kopf peering object's name (MOEOPS_PEERING_NAME of the operator): one per release, so that two releases
(e.g. each watching its own namespaces) never share one, nor fight over it at install. */}}
{{- define "moeops.peeringName" -}}
{{- include "moeops.fullname" . -}}
{{- end -}}

{{- define "moeops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moeops.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* ServiceAccount name of a component: "moeops.serviceAccountName" (dict "root" $ "component" "operator" "values" .Values.operator) */}}
{{- define "moeops.serviceAccountName" -}}
{{- if .values.serviceAccount.create -}}
{{- default (include "moeops.component.fullname" .) .values.serviceAccount.name -}}
{{- else -}}
{{- required (printf "%s: serviceAccount.name is required when serviceAccount.create is false" .component) .values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Images ----------------------------------------------------------------------------------------------- */}}
{{/* "moeops.image" (dict "root" $ "name" "moeops-operator" "override" .Values.operator.image) */}}
{{- define "moeops.image" -}}
{{- $repo := default (printf "%s/%s" .root.Values.image.registry .name) .override.repository -}}
{{- $tag := default (default .root.Chart.AppVersion .root.Values.image.tag) .override.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "moeops.pullPolicy" -}}
{{- default .root.Values.image.pullPolicy .override.pullPolicy -}}
{{- end -}}

{{- define "moeops.runtimeImage" -}}
{{- $rt := .Values.operator.runtimeImage -}}
{{- $repo := default (printf "%s/moeops-runtime" .Values.image.registry) $rt.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) $rt.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{/* Environment ------------------------------------------------------------------------------------------ */}}
{{/* NATS: MOEOPS_NATS_URL and MOEOPS_NATS_* exactly as moeops.bus.connection reads them. */}}
{{- define "moeops.natsEnv" -}}
{{- $nats := .Values.nats -}}
{{- if $nats.enabled }}
- name: MOEOPS_NATS_URL
  value: {{ $nats.url | quote }}
{{- if $nats.auth.existingSecret }}
{{- if eq $nats.auth.type "token" }}
- name: MOEOPS_NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $nats.auth.existingSecret | quote }}
      key: {{ $nats.auth.tokenKey | quote }}
{{- else if eq $nats.auth.type "creds" }}
- name: MOEOPS_NATS_CREDS
  value: /etc/moeops/nats-auth/{{ $nats.auth.credsKey }}
{{- else if eq $nats.auth.type "nkey" }}
- name: MOEOPS_NATS_NKEY_SEED
  value: /etc/moeops/nats-auth/{{ $nats.auth.nkeySeedKey }}
{{- end }}
{{- end }}
{{- if $nats.tls.enabled }}
- name: MOEOPS_NATS_TLS_CA
  value: /etc/moeops/nats-tls/{{ $nats.tls.caKey }}
{{- if $nats.tls.certKey }}
- name: MOEOPS_NATS_TLS_CERT
  value: /etc/moeops/nats-tls/{{ $nats.tls.certKey }}
- name: MOEOPS_NATS_TLS_KEY
  value: /etc/moeops/nats-tls/{{ $nats.tls.keyKey }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Whether the NATS credentials are a file to mount. */}}
{{- define "moeops.natsAuthFile" -}}
{{- if and .Values.nats.enabled .Values.nats.auth.existingSecret (ne .Values.nats.auth.type "token") }}true{{ end -}}
{{- end -}}

{{- define "moeops.natsVolumeMounts" -}}
{{- if include "moeops.natsAuthFile" . }}
- name: nats-auth
  mountPath: /etc/moeops/nats-auth
  readOnly: true
{{- end }}
{{- if and .Values.nats.enabled .Values.nats.tls.enabled }}
- name: nats-tls
  mountPath: /etc/moeops/nats-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "moeops.natsVolumes" -}}
{{- if include "moeops.natsAuthFile" . }}
- name: nats-auth
  secret:
    secretName: {{ .Values.nats.auth.existingSecret | quote }}
    defaultMode: 0440
{{- end }}
{{- if and .Values.nats.enabled .Values.nats.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ .Values.nats.tls.existingSecret | quote }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* OTel: "moeops.otelEnv" (dict "root" $ "service" "moeops-operator"); "nodeNameSet" true where the pod sets MOEOPS_NODE_NAME itself. */}}
{{- define "moeops.otelEnv" -}}
{{- $otel := .root.Values.otel -}}
{{- if $otel.enabled }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $otel.protocol | quote }}
# The pod's k8s.* resource attributes (moeops.telemetry reads these names).
- name: MOEOPS_POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: MOEOPS_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- if not .nodeNameSet }}
- name: MOEOPS_NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
{{- end }}
{{- with $otel.resourceAttributes }}
{{- $attrs := list }}
{{- range $k, $v := . }}
{{- $attrs = append $attrs (printf "%s=%s" $k (toString $v)) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Scheduling of a component's pods: "moeops.scheduling" (dict "root" $ "component" "operator" "values" $v).
priorityClassName (the component's, else the chart's), nodeSelector, tolerations, affinity and
topologySpreadConstraints (a constraint without labelSelector gets the component's selector labels). */}}
{{- define "moeops.scheduling" -}}
{{- $v := .values -}}
{{- with (default .root.Values.priorityClassName $v.priorityClassName) }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $spread := list }}
{{- $selector := dict "matchLabels" (include "moeops.selectorLabels" . | fromYaml) }}
{{- range ($v.topologySpreadConstraints | default list) }}
{{- $spread = append $spread (merge (deepCopy .) (dict "labelSelector" $selector)) }}
{{- end }}
{{- with .defaultSpread }}
{{- if not (or $spread $v.affinity) }}
{{- $spread = list (dict "maxSkew" 1 "topologyKey" "kubernetes.io/hostname" "whenUnsatisfiable" "ScheduleAnyway" "labelSelector" $selector) }}
{{- end }}
{{- end }}
{{- with $spread }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Security contexts of a component: the chart-wide ones with the component's own merged over them.
"moeops.podSecurityContext" / "moeops.containerSecurityContext" (dict "root" $ "values" $v). */}}
{{- define "moeops.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.podSecurityContext) (deepCopy (.values.podSecurityContext | default dict))) -}}
{{- end -}}

{{- define "moeops.containerSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .root.Values.containerSecurityContext) (deepCopy (.values.securityContext | default dict))) -}}
{{- end -}}

{{/* The bus is there (components that only make sense with it). */}}
{{- define "moeops.busComponent" -}}
{{- if .Values.nats.enabled }}true{{ end -}}
{{- end -}}

{{/* RBAC: the operator's namespaced rules (a ClusterRole's when it watches the whole cluster, else a Role's in
each watched namespace). Each one is a call of moeops.operator.kube, the handlers or kopf. */}}
{{- define "moeops.operatorNamespacedRules" -}}
- apiGroups: [moeops.dev]
  resources: [moetrainingjobs, inferenceservices]
  verbs: [get, list, watch, patch]
- apiGroups: [moeops.dev]
  resources: [moetrainingjobs]
  verbs: [delete]
- apiGroups: [moeops.dev]
  resources: [moetrainingjobs/status, inferenceservices/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion: clusters that enforce OwnerReferencesPermissionEnforcement
# ask for update on the owner's finalizers.
- apiGroups: [moeops.dev]
  resources: [moetrainingjobs/finalizers, inferenceservices/finalizers]
  verbs: [update]
# delete: a worker failure restarts the whole group (a new worker Job); list pods: which worker failed, and how.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# get: whether a job's checkpoint claim exists and is ReadWriteMany for workers on several nodes (CheckpointStorageBlocked).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# An InferenceService that may run two replicas or more gets a PodDisruptionBudget; deleted when max drops below 2.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, create, patch]
# create: the operator's own events; list: a worker Job's FailedCreate, when its pods cannot be created (WorkersBlocked).
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- end -}}

{{/* The port of otel.endpoint (its scheme's default when it names none): what the NetworkPolicy lets out. */}}
{{- define "moeops.otlpPort" -}}
{{- $url := urlParse .Values.otel.endpoint -}}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $url.host) -}}
{{- if $port }}{{ $port }}{{ else if eq $url.scheme "https" }}443{{ else }}80{{ end -}}
{{- end -}}

{{/* The health endpoints of a bus service (rebalancer, carbon aggregator, carbon agent; `moeops.bus.health`):
bound to the pod IP, where the kubelet probes (the service's default is loopback). Called with its values. */}}
{{- define "moeops.healthEnv" -}}
- name: MOEOPS_HEALTH_ADDR
  valueFrom:
    fieldRef: {fieldPath: status.podIP}
- name: MOEOPS_HEALTH_PORT
  value: {{ .healthPort | quote }}
{{- end -}}

{{/* Its port and probes: /healthz restarts a hung process, /readyz reports one cut off from NATS. */}}
{{- define "moeops.healthProbes" -}}
ports:
  - name: health
    containerPort: {{ .healthPort }}
    protocol: TCP
livenessProbe:
  httpGet: {path: /healthz, port: health}
  {{- toYaml .livenessProbe | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: health}
  {{- toYaml .readinessProbe | nindent 2 }}
{{- end -}}
