package inject

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Prometheus scrape annotations, added only when the pod sets none of its own.
const (
	prometheusPrefix           = "prometheus.io/"
	AnnotationPrometheusScrape = prometheusPrefix + "scrape"
	AnnotationPrometheusPort   = prometheusPrefix + "port"
	AnnotationPrometheusPath   = prometheusPrefix + "path"
)

// Agent HTTP endpoints on the metrics port (DESIGN.md).
const (
	metricsPath  = "/metrics"
	livenessPath = "/healthz"
)

// Inject mutates pod in place (only call when Decide said Inject) and returns admission
// warnings: the override warnings Decide reported plus notes about the injection.
func Inject(pod *corev1.Pod, cfg Config) (warnings []string) {
	s, warnings := podSettings(pod, cfg)
	agent := agentContainer(cfg, s)

	if s.nativeSidecar {
		// Native sidecars start in initContainers order, each before the next init container
		// runs. Appending last lets the user's init containers (config rendering, migrations)
		// finish first, while the agent still starts before Kong's main containers and stops
		// after them, so it sees Kong's first and last requests.
		always := corev1.ContainerRestartPolicyAlways
		agent.RestartPolicy = &always
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, agent)
	} else {
		pod.Spec.Containers = append(pod.Spec.Containers, agent)
	}

	// The agent finds nginx among the pod's processes: it needs the pod-wide PID namespace.
	share := true
	pod.Spec.ShareProcessNamespace = &share

	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[kwv1.AnnotationInjected] = cfg.AgentVersion
	if !hasPrometheusAnnotation(pod.Annotations) {
		// Scrape the agent only where the pod says nothing about Prometheus: Kong's own
		// Prometheus plugin endpoint, when annotated, must keep being scraped as configured.
		pod.Annotations[AnnotationPrometheusScrape] = "true"
		pod.Annotations[AnnotationPrometheusPort] = strconv.Itoa(int(cfg.MetricsPort))
		pod.Annotations[AnnotationPrometheusPath] = metricsPath
	}

	if pod.Spec.AutomountServiceAccountToken != nil && !*pod.Spec.AutomountServiceAccountToken {
		warnings = append(warnings, "automountServiceAccountToken is false: the kong-watcher agent "+
			"cannot write its pod annotations and Events, only /metrics and logs")
	}
	return warnings
}

// agentContainer builds the agent sidecar for one pod.
func agentContainer(cfg Config, s settings) corev1.Container {
	port := cfg.MetricsPort
	metricsPort := intstr.FromString(kwv1.MetricsPortName)

	return corev1.Container{
		Name:            kwv1.AgentContainerName,
		Image:           cfg.Image,
		ImagePullPolicy: cfg.PullPolicy,
		Env: []corev1.EnvVar{
			{Name: kwv1.EnvPodName, ValueFrom: &corev1.EnvVarSource{
				FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}},
			{Name: kwv1.EnvPodNamespace, ValueFrom: &corev1.EnvVarSource{
				FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}},
			{Name: kwv1.EnvLogLevel, Value: s.logLevel},
			{Name: kwv1.EnvJSONLog, Value: strconv.FormatBool(s.jsonLog)},
			{Name: kwv1.EnvProcessName, Value: s.processName},
			{Name: kwv1.EnvStatsInterval, Value: s.statsInterval.String()},
			{Name: kwv1.EnvMetricsAddr, Value: fmt.Sprintf(":%d", port)},
		},
		Ports: []corev1.ContainerPort{{
			Name:          kwv1.MetricsPortName,
			ContainerPort: port,
			Protocol:      corev1.ProtocolTCP,
		}},
		Resources: *cfg.Resources.DeepCopy(),
		// No readiness probe, and no startupProbe: a sidecar's readiness counts toward the
		// pod's Ready condition, so any readiness probe lets a monitoring hiccup take Kong out of
		// its Service (after a restart of the agent the pod would stay NotReady until the next
		// probe period). Without one the agent is ready as soon as it runs; it never exits on
		// its own (see cmd/agent: it stays up and says why when it cannot count). A startupProbe
		// would hold Kong's containers back. /readyz ("probes attached") is for people.
		LivenessProbe: &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: livenessPath, Port: metricsPort, Scheme: corev1.URISchemeHTTP}},
			InitialDelaySeconds: 5,
			PeriodSeconds:       20,
			TimeoutSeconds:      2,
			FailureThreshold:    3,
			SuccessThreshold:    1,
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext:          agentSecurityContext(cfg.Privileged),
	}
}

// agentSecurityContext grants the agent what attaching uprobes needs and nothing else.
func agentSecurityContext(privileged bool) *corev1.SecurityContext {
	f, t := false, true
	root := int64(0)
	sc := &corev1.SecurityContext{
		Capabilities: &corev1.Capabilities{
			// BPF: load programs and maps. PERFMON: load tracing programs and attach uprobes
			// through uprobe_multi links (kernel >= 6.6). SYS_PTRACE: read /proc/<pid>/exe and
			// /proc/<pid>/root of Kong's workers, which run as another user.
			Add:  []corev1.Capability{"BPF", "PERFMON", "SYS_PTRACE"},
			Drop: []corev1.Capability{"ALL"},
		},
		Privileged:               &f,
		AllowPrivilegeEscalation: &f,
		ReadOnlyRootFilesystem:   &t,
		// Root uid on purpose: file capabilities of a non-root process are lost at exec unless
		// set as ambient, and the kernel also checks uid for some /proc/<pid> accesses of other
		// users' processes. The capability set above, not uid 0, is what bounds the agent: uid
		// 0 without CAP_SYS_ADMIN/CAP_DAC_OVERRIDE cannot touch the node.
		RunAsUser:    &root,
		RunAsNonRoot: &f,
		// Unconfined seccomp: the container runtime's default profile (RuntimeDefault) blocks
		// bpf() and perf_event_open() unless CAP_SYS_ADMIN is held (containerd's profile
		// predates CAP_BPF/CAP_PERFMON), which would defeat the least-privilege capability set.
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined},
	}
	if privileged {
		// Escape hatch for kernels older than 6.6: perf-event uprobes need CAP_SYS_ADMIN.
		// The API server rejects privileged together with allowPrivilegeEscalation: false.
		sc.Privileged = &t
		sc.AllowPrivilegeEscalation = &t
	}
	return sc
}

// hasPrometheusAnnotation reports whether any prometheus.io/* annotation is set.
func hasPrometheusAnnotation(ann map[string]string) bool {
	for k := range ann {
		if strings.HasPrefix(k, prometheusPrefix) {
			return true
		}
	}
	return false
}
