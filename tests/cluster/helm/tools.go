//go:build tools

// Package tools pins the helm command that build.sh builds, so that go.mod and
// go.sum hold exactly its dependencies. Its own module, not kube/'s: helm
// v4.3.2 requires the k8s.io/* v0.37 libraries, kube/ pins v0.36.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
