{{- define "openpods.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "openpods.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* selector labels of one component: include "openpods.selector" (list . "api") */}}
{{- define "openpods.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "openpods.podsNamespace" -}}
{{- .Values.pods.namespace | default .Release.Namespace -}}
{{- end -}}

{{- define "openpods.claimName" -}}
{{- .Values.storage.existingClaim | default (printf "%s-storage" (include "openpods.fullname" .)) -}}
{{- end -}}

{{- define "openpods.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "openpods.dbSecret" -}}
{{- .Values.postgresql.existingSecret | default (printf "%s-secrets" (include "openpods.fullname" .)) -}}
{{- end -}}

{{- define "openpods.mqSecret" -}}
{{- .Values.rabbitmq.existingSecret | default (printf "%s-secrets" (include "openpods.fullname" .)) -}}
{{- end -}}

{{/* the pod template shared by the api, spawner and health Deployments: include "openpods.podSpec" (list . "api" $resources) */}}
{{- define "openpods.podSpec" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $resources := index . 2 -}}
serviceAccountName: {{ include "openpods.fullname" $root }}
automountServiceAccountToken: true
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  fsGroupChangePolicy: OnRootMismatch
  seccompProfile: {type: RuntimeDefault}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
initContainers:
  # Shared keys from the release Secret, copied only where missing (copies from one Secret are identical,
  # so replicas starting together agree).
  - name: keys
    image: {{ include "openpods.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command:
      - sh
      - -c
      - mkdir -p /data/keys && chmod 700 /data/keys && for f in jwt-signing-key.pem secrets.key; do
        [ -e /data/keys/$f ] || { cp /keys/$f /data/keys/.$f.tmp && chmod 600 /data/keys/.$f.tmp &&
        mv -n /data/keys/.$f.tmp /data/keys/$f; rm -f /data/keys/.$f.tmp; }; done
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    resources:
      requests: {cpu: 10m, memory: 16Mi}
      limits: {cpu: 100m, memory: 64Mi}
    volumeMounts:
      - {name: data, mountPath: /data}
      - {name: keys, mountPath: /keys, readOnly: true}
containers:
  - name: {{ $role }}
    image: {{ include "openpods.image" $root | quote }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command: [openpods, {{ $role | quote }}]
    envFrom:
      - configMapRef:
          name: {{ include "openpods.fullname" $root }}-config
    env:
      - name: OPENPODS_DATABASE_URL
        valueFrom:
          secretKeyRef: {name: {{ include "openpods.dbSecret" $root }}, key: {{ $root.Values.postgresql.existingSecretKey }}}
      - name: OPENPODS_RABBITMQ_URL
        valueFrom:
          secretKeyRef: {name: {{ include "openpods.mqSecret" $root }}, key: {{ $root.Values.rabbitmq.existingSecretKey }}}
      - name: OPENPODS_ADMIN_PASSWORD
        valueFrom:
          secretKeyRef: {name: {{ include "openpods.fullname" $root }}-secrets, key: admin-password}
      - name: OPENPODS_PROXY_SECRET
        valueFrom:
          secretKeyRef: {name: {{ include "openpods.fullname" $root }}-secrets, key: proxy-secret}
    {{- if eq $role "api" }}
    ports:
      - {name: http, containerPort: {{ $root.Values.api.port }}, protocol: TCP}
    readinessProbe:
      httpGet: {path: /healthcheck, port: http}
      periodSeconds: 5
    livenessProbe:
      httpGet: {path: /healthcheck, port: http}
      periodSeconds: 20
      failureThreshold: 6
    {{- end }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    resources:
      {{- toYaml $resources | nindent 6 }}
    volumeMounts:
      - {name: data, mountPath: /data}
      - {name: tmp, mountPath: /tmp}
volumes:
  - name: data
    {{- if $root.Values.storage.nfs.server }}
    nfs: {server: {{ $root.Values.storage.nfs.server | quote }}, path: {{ $root.Values.storage.nfs.path | quote }}}
    {{- else }}
    persistentVolumeClaim: {claimName: {{ include "openpods.claimName" $root }}}
    {{- end }}
  - name: tmp
    emptyDir: {}
  - name: keys
    secret:
      secretName: {{ include "openpods.fullname" $root }}-secrets
      defaultMode: 0400
      items:
        - {key: jwt-signing-key.pem, path: jwt-signing-key.pem}
        - {key: secrets.key, path: secrets.key}
{{- end -}}

{{/* the API's trusted forwarding peers: see api.forwardedAllowIps in values.yaml */}}
{{- define "openpods.forwardedAllowIps" -}}
{{- if .Values.api.forwardedAllowIps -}}
{{- .Values.api.forwardedAllowIps -}}
{{- else if and .Values.traefik.enabled .Values.api.networkPolicy.enabled -}}
*
{{- else -}}
127.0.0.1
{{- end -}}
{{- end -}}
