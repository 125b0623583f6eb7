package app

import (
	"fmt"

	"github.com/go-logr/logr"
	utilversion "k8s.io/apimachinery/pkg/util/version"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
)

// firstNativeSidecars is the first Kubernetes whose API servers keep an init container's
// restartPolicy: Always by default (SidecarContainers, beta and on in 1.29).
var firstNativeSidecars = utilversion.MustParseGeneric("1.29.0")

// nativeSidecars reports whether an API server of gitVersion (as /version gives it, e.g.
// "v1.28.3-gke.100") keeps a native sidecar's restartPolicy.
func nativeSidecars(gitVersion string) (bool, error) {
	v, err := utilversion.ParseGeneric(gitVersion)
	if err != nil {
		return false, fmt.Errorf("API server version %q: %w", gitVersion, err)
	}
	return v.AtLeast(firstNativeSidecars), nil
}

// fitSidecarMode turns --agent-native-sidecar off on an API server that predates native
// sidecars: it drops the init container's restartPolicy without an error, and the agent would
// then be an init container that never ends, so the Kong pod would never start. A server
// whose version cannot be read gets plain containers too: they work on every version.
func fitSidecarMode(cfg *rest.Config, o *Options, log logr.Logger) {
	if !o.Agent.NativeSidecar {
		return
	}
	ok, err := func() (bool, error) {
		dc, err := discovery.NewDiscoveryClientForConfig(cfg)
		if err != nil {
			return false, err
		}
		v, err := dc.ServerVersion()
		if err != nil {
			return false, err
		}
		return nativeSidecars(v.GitVersion)
	}()
	switch {
	case err != nil:
		log.Error(err, "cannot tell whether the API server keeps native sidecars: the agent is injected as a plain container")
	case !ok:
		log.Info("the API server predates native sidecars (Kubernetes 1.29): the agent is injected as a plain container")
	default:
		return
	}
	o.Agent.NativeSidecar = false
}
