{{- define "nightshift.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nightshift.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nightshift.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nightshift.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nightshift.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "nightshift.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "nightshift.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "nightshift.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* nightshift.yml: the chart's paths, then the user's `config`. */}}
{{- define "nightshift.config" -}}
{{- $base := dict "listen" "0.0.0.0:3000" "data_dir" "/var/lib/nightshift" "triggers" "/etc/nightshift/triggers" "skills" "/etc/nightshift/skills" -}}
{{- if eq .Values.store.type "sqlite" -}}
{{- $_ := set $base "store" "sqlite:///var/lib/nightshift/nightshift.db" -}}
{{- end -}}
{{- toYaml (mergeOverwrite $base (deepCopy .Values.config)) -}}
{{- end -}}

{{- define "nightshift.checks" -}}
{{- if not (has .Values.store.type (list "sqlite" "postgres")) -}}
{{- fail "store.type must be sqlite or postgres" -}}
{{- end -}}
{{- if and (eq .Values.store.type "sqlite") (gt (int .Values.replicas) 1) -}}
{{- fail "store.type sqlite runs one replica: a SQLite file has one writer. Use store.type postgres for more" -}}
{{- end -}}
{{- if and (eq .Values.store.type "postgres") (not .Values.store.urlSecret.name) -}}
{{- fail "store.type postgres needs store.urlSecret.name: the Secret holding the store's URL" -}}
{{- end -}}
{{- if and (eq .Values.store.type "sqlite") (not .Values.persistence.enabled) -}}
{{- fail "store.type sqlite keeps the store on the volume: persistence.enabled must be true" -}}
{{- end -}}
{{- end -}}
