package inject

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Decision is the report of why a pod is or is not injected.
type Decision struct {
	Inject   bool
	Reason   string   // machine-friendly short reason, one of the Reason* constants
	Message  string   // human sentence
	Warnings []string // e.g. invalid override annotations (ignored)
	// Warning marks a skip the pod's owner should act on (the Event is a Warning): the pod
	// was labelled for monitoring and something in its spec or its namespace stood in the way.
	Warning bool
}

// Decision reasons. They appear in the webhook's log lines and, for labelled pods, in the
// InjectionSkipped Event on the pod's owner.
const (
	ReasonInject = "Inject"
	// ReasonNotLabelled: the pod has no kong-watcher.io/inject label.
	ReasonNotLabelled = "NotLabelled"
	// ReasonInvalidLabel: the label is set to something other than "true" ("false" included:
	// that is an explicit opt-out).
	ReasonInvalidLabel = "LabelNotTrue"
	// ReasonAlreadyInjected: the pod already has the agent container (e.g. the webhook was
	// re-invoked after another webhook changed the pod, or the pod was created from a dump of
	// an injected pod).
	ReasonAlreadyInjected = "AlreadyInjected"
	// ReasonExcludedNamespace: the namespace is in Config.ExcludedNamespaces.
	ReasonExcludedNamespace = "ExcludedNamespace"
	// ReasonShareProcessNamespaceDisabled: the pod sets shareProcessNamespace: false; the agent
	// cannot see Kong's processes without it, and the pod author said no.
	ReasonShareProcessNamespaceDisabled = "ShareProcessNamespaceDisabled"
	// ReasonHostPID: the pod uses the host's PID namespace (see Decide).
	ReasonHostPID = "HostPID"
	// ReasonUnsupportedOS: the pod is not a Linux pod; eBPF uprobes are Linux only.
	ReasonUnsupportedOS = "UnsupportedOS"
	// ReasonMetricsPortConflict: a container of the pod already declares the agent's metrics
	// port; the agent could not bind it.
	ReasonMetricsPortConflict = "MetricsPortConflict"
	// ReasonVolumeNameConflict: the pod already has a volume of the name of one the agent
	// adds (its report token's); the API server would refuse the pod with two.
	ReasonVolumeNameConflict = "VolumeNameConflict"
	// ReasonNoContainers: the pod has no containers: it is invalid, there is no Kong to watch.
	ReasonNoContainers = "NoContainers"
	// ReasonSidecarWouldNotEnd: the pod runs to completion (restartPolicy Never or OnFailure)
	// and the agent would be a plain container (native-sidecar "false"), which never exits:
	// the pod would never complete.
	ReasonSidecarWouldNotEnd = "SidecarWouldNotEnd"
	// ReasonAdmissionWouldReject: the API server would reject the pod with the agent (Pod
	// Security, a ResourceQuota, a policy engine, ...): the pod is created without it.
	ReasonAdmissionWouldReject = "AdmissionWouldReject"
)

// Decide reports whether pod, being created in namespace, gets the agent. namespace comes from
// the AdmissionRequest because pod.Namespace is often empty at CREATE. Decide does not modify
// pod. When Decision.Inject is true, Warnings holds the same override warnings Inject returns.
func Decide(pod *corev1.Pod, namespace string, cfg Config) Decision {
	if pod == nil {
		return Decision{Reason: ReasonNotLabelled, Message: "no pod in the request"}
	}
	value, labelled := pod.Labels[kwv1.LabelInject]
	if !labelled {
		return Decision{Reason: ReasonNotLabelled,
			Message: fmt.Sprintf("pod has no %s label", kwv1.LabelInject)}
	}
	if value != kwv1.LabelInjectValue {
		d := Decision{Reason: ReasonInvalidLabel,
			Message: fmt.Sprintf("label %s=%q is not %q", kwv1.LabelInject, truncate(value, 63), kwv1.LabelInjectValue)}
		if value != "false" {
			// Probably a typo ("True", "yes"): tell the user, "false" is a deliberate opt-out.
			d.Warnings = []string{d.Message + ": kong-watcher agent not injected"}
		}
		return d
	}
	if cfg.excluded(namespace) {
		return Decision{Reason: ReasonExcludedNamespace,
			Message: fmt.Sprintf("namespace %q is excluded from injection", namespace)}
	}
	if hasAgent(pod) {
		return Decision{Reason: ReasonAlreadyInjected,
			Message: fmt.Sprintf("pod already has a %s container", kwv1.AgentContainerName)}
	}
	if len(pod.Spec.Containers) == 0 {
		// The API server rejects such a pod anyway; a patch appending to a list the request
		// does not have would not even apply.
		return Decision{Reason: ReasonNoContainers, Message: "pod has no containers"}
	}
	if pod.Spec.OS != nil && pod.Spec.OS.Name != corev1.Linux {
		return Decision{Reason: ReasonUnsupportedOS,
			Message: fmt.Sprintf("pod OS is %q; the agent needs Linux eBPF", pod.Spec.OS.Name)}
	}
	// hostPID: the agent would see every process on the node and attach to every nginx on it,
	// reporting other pods' traffic as this pod's; and the API server rejects hostPID together
	// with shareProcessNamespace. The design keeps the agent in the pod's own PID namespace,
	// so a hostPID pod is skipped rather than monitored wrongly.
	if pod.Spec.HostPID {
		return Decision{Reason: ReasonHostPID,
			Message: "pod uses hostPID; the agent only monitors Kong through the pod's own shared process namespace"}
	}
	if spn := pod.Spec.ShareProcessNamespace; spn != nil && !*spn {
		return Decision{Reason: ReasonShareProcessNamespaceDisabled,
			Message: "pod sets shareProcessNamespace: false; the agent cannot see Kong's processes without it"}
	}
	if c, ok := metricsPortUser(pod, cfg.MetricsPort); ok {
		return Decision{Reason: ReasonMetricsPortConflict,
			Message: fmt.Sprintf("container %q already declares port %d, the agent's metrics port", c, cfg.MetricsPort)}
	}
	if v, ok := volumeNameUser(pod, cfg); ok {
		return Decision{Reason: ReasonVolumeNameConflict,
			Message: fmt.Sprintf("pod already has a volume named %q, the name of the agent's report token volume", v)}
	}
	s, warnings := podSettings(pod, cfg)
	if !s.nativeSidecar && pod.Spec.RestartPolicy != "" && pod.Spec.RestartPolicy != corev1.RestartPolicyAlways {
		return Decision{Reason: ReasonSidecarWouldNotEnd, Warning: true, Warnings: warnings,
			Message: fmt.Sprintf("pod has restartPolicy %s and the agent would be a plain container (%s: \"false\"), "+
				"which never exits, so the pod would never complete; remove the annotation to inject the agent as a native sidecar",
				pod.Spec.RestartPolicy, kwv1.AnnotationNativeSidecar)}
	}
	return Decision{
		Inject:   true,
		Reason:   ReasonInject,
		Message:  fmt.Sprintf("injecting kong-watcher agent %s as %s", cfg.AgentVersion, sidecarKind(s.nativeSidecar)),
		Warnings: warnings,
	}
}

// hasAgent reports whether the pod already carries the agent container, as a regular or an
// init (native sidecar) container: injection is idempotent.
func hasAgent(pod *corev1.Pod) bool {
	for _, c := range pod.Spec.InitContainers {
		if c.Name == kwv1.AgentContainerName {
			return true
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == kwv1.AgentContainerName {
			return true
		}
	}
	return false
}

// metricsPortUser returns a container that declares port as a TCP containerPort. Containers
// share the pod's network namespace, so the agent's listener would fail to bind.
func metricsPortUser(pod *corev1.Pod, port int32) (string, bool) {
	check := func(cs []corev1.Container) (string, bool) {
		for _, c := range cs {
			for _, p := range c.Ports {
				if p.ContainerPort == port && (p.Protocol == "" || p.Protocol == corev1.ProtocolTCP) {
					return c.Name, true
				}
			}
		}
		return "", false
	}
	if name, ok := check(pod.Spec.Containers); ok {
		return name, true
	}
	// Plain init containers have exited before the agent listens; native sidecars have not.
	var sidecars []corev1.Container
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sidecars = append(sidecars, c)
		}
	}
	return check(sidecars)
}

// volumeNameUser returns a volume of the pod named like one Inject would add. Inject adds the
// report token's volume once the manager's CA is known, which can happen between Decide and
// Inject: with reporting configured, the name is taken to be needed either way.
func volumeNameUser(pod *corev1.Pod, cfg Config) (string, bool) {
	if cfg.Report.URL == "" {
		return "", false
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == kwv1.TokenVolumeName {
			return v.Name, true
		}
	}
	return "", false
}

func sidecarKind(native bool) string {
	if native {
		return "a native sidecar"
	}
	return "a sidecar container"
}
