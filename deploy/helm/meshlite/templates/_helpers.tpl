{{/*
The labels of one component's objects, as deploy/*.yaml writes them. No
helm.sh/chart or managed-by label: with the default values the chart renders
exactly what `kubectl apply -k deploy/` applies (helm itself marks the live
objects it owns with app.kubernetes.io/managed-by=Helm at install).
*/}}
{{- define "meshlite.labels" -}}
app.kubernetes.io/name: meshlite-{{ . }}
app.kubernetes.io/component: {{ . }}
app.kubernetes.io/part-of: meshlite
{{- end }}

{{/* The namespace of every namespaced object: meshlite-contract's SYSTEM_NAMESPACE. */}}
{{- define "meshlite.namespace" -}}
meshlite-system
{{- end }}

{{/* The image of certd, the injector and the injected containers. */}}
{{- define "meshlite.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/*
A map of quantities as a flow map of strings, for the injector's config file:
its parser takes strings only ("1", not 1).
*/}}
{{- define "meshlite.quantities" -}}
{{- $out := dict -}}
{{- range $k, $v := . }}{{ $_ := set $out $k (toString $v) }}{{ end -}}
{{- toJson $out -}}
{{- end }}

{{/* proxy.sidecarMode as the injector's legacyMode: auto, false (native) or true (legacy). */}}
{{- define "meshlite.legacyMode" -}}
{{- $modes := dict "auto" "auto" "native" "false" "legacy" "true" -}}
{{- $mode := toString .Values.proxy.sidecarMode -}}
{{- if not (hasKey $modes $mode) -}}
{{- fail (printf "proxy.sidecarMode %q: must be auto, native or legacy" $mode) -}}
{{- end -}}
{{- get $modes $mode -}}
{{- end }}

{{/* A Deployment's PodDisruptionBudget, only where one replica may be spared. */}}
{{- define "meshlite.pdb" -}}
{{- if gt (int .replicas) 1 }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: meshlite-{{ .component }}
  namespace: {{ include "meshlite.namespace" . }}
  labels:
    {{- include "meshlite.labels" .component | nindent 4 }}
spec:
  minAvailable: 1
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      app.kubernetes.io/name: meshlite-{{ .component }}
{{- end }}
{{- end }}
