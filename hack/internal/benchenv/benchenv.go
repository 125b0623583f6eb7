// Package benchenv is the Kubernetes side that hack/benchwebhook and hack/benchmanager set up
// the same way: a real kube-apiserver + etcd from envtest on the binaries hack/k8s-binaries.sh
// fetches, the manifests `kubectl kustomize config/default` renders (what users install), and
// the pod of a labelled Kong Deployment that the webhook is asked to inject and the manager's
// agents run in. Sharing them keeps both benchmarks measuring against the same cluster and the
// same pod. The measuring and reporting helpers they share with test/benchagent are in
// test/benchkit.
package benchenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// RequireAssets fails, naming the make target that sets it, when KUBEBUILDER_ASSETS (where
// envtest finds kube-apiserver and etcd) is not set.
func RequireAssets(makeTarget string) error {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		return fmt.Errorf("KUBEBUILDER_ASSETS is not set (run `make %s`, or set it to the output of hack/k8s-binaries.sh)", makeTarget)
	}
	return nil
}

// controlPlaneStartTimeout replaces envtest's 20 s default, too short for a cold
// kube-apiserver start on a busy machine.
const controlPlaneStartTimeout = 90 * time.Second

// StartAPIServer starts env's kube-apiserver and etcd and prints how long that took; the
// caller stops env. An unset ControlPlaneStartTimeout becomes 90 s.
func StartAPIServer(env *envtest.Environment) (*rest.Config, error) {
	if env.ControlPlaneStartTimeout == 0 {
		env.ControlPlaneStartTimeout = controlPlaneStartTimeout
	}
	t0 := time.Now()
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting envtest: %w", err)
	}
	fmt.Printf("envtest API server up in %v\n", time.Since(t0).Round(time.Millisecond))
	return cfg, nil
}

// RepoRoot is the repository this package is built from (the benchmarks run from source).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// RenderConfigDefault is `kubectl kustomize config/default` split into its YAML documents
// (blank ones dropped): the objects a user installs, so the benchmarks run the shipped RBAC,
// webhook configuration and policies rather than copies of them.
func RenderConfigDefault() ([]string, error) {
	raw, err := exec.Command("kubectl", "kustomize", filepath.Join(RepoRoot(), "config", "default")).Output()
	if err != nil {
		return nil, fmt.Errorf("kubectl kustomize config/default: %w", err)
	}
	var docs []string
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		if strings.TrimSpace(doc) != "" {
			docs = append(docs, doc)
		}
	}
	return docs, nil
}
