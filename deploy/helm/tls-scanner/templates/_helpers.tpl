{{/* The release's name for every object: the release name, with the chart's appended unless it contains it. */}}
{{- define "tls-scanner.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select this release's pods. */}}
{{- define "tls-scanner.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. app.kubernetes.io/name is also the job label the shipped alerts select (job="tls-scanner"). */}}
{{- define "tls-scanner.labels" -}}
{{ include "tls-scanner.selectorLabels" . }}
app.kubernetes.io/component: scanner
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The web config's Secret. */}}
{{- define "tls-scanner.webSecret" -}}
{{ include "tls-scanner.fullname" . }}-web
{{- end -}}

{{/* The daemon's flags, one list item each; the shard flag is added by the workload. */}}
{{- define "tls-scanner.args" -}}
- --config=/etc/tls-scanner/endpoints.yaml
- --state-file=/var/lib/tls-scanner/tls-scanner.db
- --web.listen-address=:{{ .Values.service.port }}
- --log-format={{ .Values.logFormat }}
{{- if .Values.webConfig.enabled }}
- --web.config.file=/etc/tls-scanner-web/web-config.yml
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}

{{/* A probe of one of the daemon's endpoints; behind basic auth it sends the chart's credentials. */}}
{{- define "tls-scanner.probe" -}}
httpGet:
  path: {{ .path }}
  port: http-metrics
  {{- if .root.Values.webConfig.enabled }}
  httpHeaders:
    - name: Authorization
      value: {{ printf "Basic %s" (printf "%s:%s" .root.Values.webConfig.username .root.Values.webConfig.password | b64enc) | quote }}
  {{- end }}
{{- end -}}

{{/*
The pod template of a Deployment (dict root, shard: the shard's index or -1 for none) or of the StatefulSet (shard:
"ordinal", the pod's ordinal, read from its name as deploy/kubernetes/statefulset.yaml does).
*/}}
{{- define "tls-scanner.pod" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
metadata:
  labels:
    {{- include "tls-scanner.labels" $root | nindent 4 }}
    {{- if ne (toString .shard) "-1" }}
    tls-scanner/shard: {{ .shard | quote }}
    {{- end }}
  {{- with $values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 30
  securityContext:
    {{- toYaml $values.podSecurityContext | nindent 4 }}
  containers:
    - name: tls-scanner
      image: "{{ $values.image.repository }}:{{ $values.image.tag | default $root.Chart.AppVersion }}"
      imagePullPolicy: {{ $values.image.pullPolicy }}
      {{- if eq (toString .shard) "ordinal" }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: SHARD_COUNT
          value: {{ $values.shards | quote }}
      # The shard index is the pod's ordinal: the number after the last "-" of the StatefulSet pod name.
      command:
        - /bin/sh
        - -c
        - |
          ordinal="${POD_NAME##*-}"
          case "$ordinal" in
            ''|*[!0-9]*) echo "tls-scanner: no ordinal in pod name '$POD_NAME'" >&2; exit 2 ;;
          esac
          exec tls-scanner "$@" --shard "$ordinal/$SHARD_COUNT"
        - tls-scanner
      {{- end }}
      args:
        {{- include "tls-scanner.args" $root | nindent 8 }}
        {{- if and (ne (toString .shard) "-1") (ne (toString .shard) "ordinal") }}
        - --shard={{ .shard }}/{{ $values.shards }}
        {{- end }}
      ports:
        - name: http-metrics
          containerPort: {{ $values.service.port }}
          protocol: TCP
      readinessProbe:
        {{- include "tls-scanner.probe" (dict "root" $root "path" "/-/ready") | nindent 8 }}
        periodSeconds: 10
      livenessProbe:
        {{- include "tls-scanner.probe" (dict "root" $root "path" "/-/healthy") | nindent 8 }}
        initialDelaySeconds: 10
        periodSeconds: 30
        timeoutSeconds: 5
        failureThreshold: 3
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      securityContext:
        {{- toYaml $values.securityContext | nindent 8 }}
      volumeMounts:
        # The whole directory, never a subPath: only then does the kubelet's update reach the pod (--config.watch).
        - name: config
          mountPath: /etc/tls-scanner
          readOnly: true
        {{- if $values.webConfig.enabled }}
        - name: web
          mountPath: /etc/tls-scanner-web
          readOnly: true
        {{- end }}
        - name: state
          mountPath: /var/lib/tls-scanner
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: config
      configMap:
        name: {{ include "tls-scanner.fullname" $root }}
    {{- if $values.webConfig.enabled }}
    - name: web
      secret:
        secretName: {{ include "tls-scanner.webSecret" $root }}
        defaultMode: 0440  # owner root, group fsGroup (the scanner)
        items:
          - {key: web-config.yml, path: web-config.yml}
    {{- end }}
    {{- if not $values.persistence.enabled }}
    - name: state
      emptyDir:
        sizeLimit: 256Mi
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with $values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
