{{/* Labels every object carries. */}}
{{- define "cachegroup.labels" -}}
app.kubernetes.io/name: cachegroup
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The driver's image. */}}
{{- define "cachegroup.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* A sidecar's image: include "cachegroup.sidecar" .Values.sidecars.NAME */}}
{{- define "cachegroup.sidecar" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* The Secret holding the peer secret. */}}
{{- define "cachegroup.peerSecretName" -}}
{{ .Values.peer.secret.existingSecret | default "cachegroup-peer" }}
{{- end }}

{{/* The Secret holding the peer TLS certificate, key and CA. */}}
{{- define "cachegroup.peerTLSSecretName" -}}
{{- if .Values.peer.tls.existingSecret -}}
{{ .Values.peer.tls.existingSecret }}
{{- else -}}
cachegroup-peer-tls
{{- end -}}
{{- end }}

{{/* The driver's flags for its peer credentials. */}}
{{- define "cachegroup.peerArgs" -}}
{{- if .Values.peer.secret.enabled }}
- --peer-secret-file=/etc/cachegroup/peer/secret
{{- end }}
{{- if .Values.peer.tls.enabled }}
- --peer-tls-cert=/etc/cachegroup/tls/tls.crt
- --peer-tls-key=/etc/cachegroup/tls/tls.key
- --peer-tls-ca=/etc/cachegroup/tls/ca.crt
{{- end }}
{{- end }}

{{/* The driver container's mounts of its peer credentials. */}}
{{- define "cachegroup.peerMounts" -}}
{{- if .Values.peer.secret.enabled }}
- name: peer-secret
  mountPath: /etc/cachegroup/peer
  readOnly: true
{{- end }}
{{- if .Values.peer.tls.enabled }}
- name: peer-tls
  mountPath: /etc/cachegroup/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* The pod's volumes of peer credentials. */}}
{{- define "cachegroup.peerVolumes" -}}
{{- if .Values.peer.secret.enabled }}
- name: peer-secret
  secret:
    secretName: {{ include "cachegroup.peerSecretName" . }}
    defaultMode: 0400
{{- end }}
{{- if .Values.peer.tls.enabled }}
- name: peer-tls
  secret:
    secretName: {{ include "cachegroup.peerTLSSecretName" . }}
    defaultMode: 0400
{{- end }}
{{- end }}

{{/* Checks of the values that templates cannot express. */}}
{{- define "cachegroup.validate" -}}
{{- if not (or .Values.peer.secret.enabled .Values.peer.tls.enabled) }}
{{- fail "peer.secret.enabled or peer.tls.enabled: members must authenticate each other" }}
{{- end }}
{{- if and .Values.peer.tls.enabled (not .Values.peer.tls.existingSecret) (not .Values.peer.tls.certManager.enabled) }}
{{- fail "peer.tls.enabled needs peer.tls.existingSecret or peer.tls.certManager.enabled" }}
{{- end }}
{{- if and .Values.peer.tls.certManager.enabled (not .Values.peer.tls.certManager.issuerRef.name) }}
{{- fail "peer.tls.certManager.enabled needs peer.tls.certManager.issuerRef.name" }}
{{- end }}
{{- if lt (int .Values.replicas) 1 }}
{{- fail "replicas (R) must be at least 1" }}
{{- end }}
{{- end }}
