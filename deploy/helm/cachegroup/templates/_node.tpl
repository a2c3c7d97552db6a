{{/*
A node plugin DaemonSet: include "cachegroup.node" (dict "root" $ "role" "member"|"client").
Members hold the group's data on their cache disk and serve their peers;
clients mount volumes for their node's pods without owning anything.
*/}}
{{- define "cachegroup.node" -}}
{{- $ := .root -}}
{{- $role := .role -}}
{{- $v := ternary $.Values.members $.Values.clients (eq $role "member") -}}
{{- $kubelet := $.Values.kubeletDir -}}
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: cachegroup-{{ $role }}
  namespace: {{ $.Release.Namespace }}
  labels:
    {{- include "cachegroup.labels" $ | nindent 4 }}
    app.kubernetes.io/component: node
    cachegroup.io/role: {{ $role }}
spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: cachegroup
      app.kubernetes.io/instance: {{ $.Release.Name }}
      app.kubernetes.io/component: node
      cachegroup.io/role: {{ $role }}
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: {{ $v.maxUnavailable }}
  template:
    metadata:
      labels:
        {{- include "cachegroup.labels" $ | nindent 8 }}
        app.kubernetes.io/component: node
        cachegroup.io/role: {{ $role }}
      {{- with $.Values.node.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: cachegroup-node
      priorityClassName: {{ $.Values.node.priorityClassName }}
      # A member's address is its host's; its identity is its node name.
      hostNetwork: true
      dnsPolicy: ClusterFirstWithHostNet
      terminationGracePeriodSeconds: {{ $.Values.node.terminationGracePeriodSeconds }}
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if eq $role "member" }}
      nodeSelector:
        kubernetes.io/os: linux
        {{- with $v.nodeSelector }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- else }}
      # Every Linux node that is not a member: one term per member label, each
      # a node without that label (or with another value).
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              {{- range $key, $value := $.Values.members.nodeSelector }}
              - matchExpressions:
                  - key: kubernetes.io/os
                    operator: In
                    values: [linux]
                  - key: {{ $key }}
                    operator: NotIn
                    values: [{{ $value | quote }}]
              {{- end }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: cachegroup
          image: {{ include "cachegroup.image" $ }}
          imagePullPolicy: {{ $.Values.image.pullPolicy }}
          args:
            - --mode=node
            - --endpoint=unix:///csi/csi.sock
            - --node-id=$(NODE_NAME)
            - --driver-name={{ $.Values.driverName }}
            - --store={{ $v.storePath }}
            - --group={{ $.Values.group }}
            # The members: the ready member plugins behind the headless
            # Service; they talk on the peer port, authenticated.
            - --members-service=$(POD_NAMESPACE)/cachegroup-members
            - --peer-address=:{{ $.Values.peer.port }}
            {{- include "cachegroup.peerArgs" $ | nindent 12 }}
            - --replicas={{ $.Values.replicas }}
            {{- if eq $role "member" }}
            - --weight={{ $v.weight }}
            {{- else }}
            # Owns nothing, is never a home, serves no peers.
            - --client-only
            {{- end }}
            # Sizes come from the environment, so that an overlay changes one
            # size without repeating the argument list.
            - --cache-size=$(CACHE_SIZE)
            - --free-floor=$(FREE_FLOOR)
            - --metrics-address=:{{ $.Values.node.metricsPort }}
            - -v={{ $.Values.logLevel }}
            {{- with $v.extraArgs }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          env:
            - name: NODE_NAME
              valueFrom:
                fieldRef:
                  fieldPath: spec.nodeName
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            - name: CACHE_SIZE
              value: {{ $v.cacheSize | quote }}
            - name: FREE_FLOOR
              value: {{ $v.freeFloor | quote }}
          securityContext:
            # Overlay and bind mounts into pods' volume directories.
            privileged: true
          ports:
            {{- if eq $role "member" }}
            - name: peer
              containerPort: {{ $.Values.peer.port }}
              protocol: TCP
            {{- end }}
            - name: metrics
              containerPort: {{ $.Values.node.metricsPort }}
              protocol: TCP
            - name: healthz
              containerPort: {{ $.Values.node.healthzPort }}
              protocol: TCP
          # Served by the liveness-probe sidecar: the driver's CSI Probe, healthy
          # only when the store takes writes and the group is usable.
          livenessProbe:
            httpGet:
              path: /healthz
              port: healthz
            initialDelaySeconds: 10
            periodSeconds: 20
            timeoutSeconds: 5
            failureThreshold: 5
          readinessProbe:
            httpGet:
              path: /healthz
              port: healthz
            periodSeconds: 10
            timeoutSeconds: 5
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          volumeMounts:
            - name: plugin-dir
              mountPath: /csi
            # Pods' volume directories: the overlays mounted here must show on
            # the host, hence Bidirectional.
            - name: kubelet-dir
              mountPath: {{ $kubelet }}
              mountPropagation: Bidirectional
            - name: store
              mountPath: {{ $v.storePath }}
            {{- include "cachegroup.peerMounts" $ | nindent 12 }}
        - name: node-driver-registrar
          image: {{ include "cachegroup.sidecar" $.Values.sidecars.registrar }}
          imagePullPolicy: {{ $.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --kubelet-registration-path={{ $kubelet }}/plugins/{{ $.Values.driverName }}/csi.sock
            - --http-endpoint=:{{ $.Values.node.registrarHealthzPort }}
            - --v={{ $.Values.logLevel }}
          ports:
            - name: registrar-hz
              containerPort: {{ $.Values.node.registrarHealthzPort }}
              protocol: TCP
          livenessProbe:
            httpGet:
              path: /healthz
              port: registrar-hz
            initialDelaySeconds: 5
            periodSeconds: 20
            timeoutSeconds: 5
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          resources:
            {{- toYaml $.Values.node.registrarResources | nindent 12 }}
          volumeMounts:
            - name: plugin-dir
              mountPath: /csi
            - name: registration-dir
              mountPath: /registration
        - name: liveness-probe
          image: {{ include "cachegroup.sidecar" $.Values.sidecars.livenessProbe }}
          imagePullPolicy: {{ $.Values.sidecars.pullPolicy }}
          args:
            - --csi-address=/csi/csi.sock
            - --health-port={{ $.Values.node.healthzPort }}
            - --probe-timeout=4s
            - --v={{ $.Values.logLevel }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
          resources:
            {{- toYaml $.Values.node.livenessProbeResources | nindent 12 }}
          volumeMounts:
            - name: plugin-dir
              mountPath: /csi
      volumes:
        - name: plugin-dir
          hostPath:
            path: {{ $kubelet }}/plugins/{{ $.Values.driverName }}
            type: DirectoryOrCreate
        - name: registration-dir
          hostPath:
            path: {{ $kubelet }}/plugins_registry
            type: Directory
        - name: kubelet-dir
          hostPath:
            path: {{ $kubelet }}
            type: Directory
        - name: store
          hostPath:
            path: {{ $v.storePath }}
            {{- if eq $role "member" }}
            # The cache disk must be mounted there: never a directory made on
            # the root filesystem.
            type: Directory
            {{- else }}
            # Only the node tier: made where missing.
            type: DirectoryOrCreate
            {{- end }}
        {{- include "cachegroup.peerVolumes" $ | nindent 8 }}
{{- end }}
