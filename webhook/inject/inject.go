package inject

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/api/agentenv"
	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Prometheus scrape annotations, added only when the pod sets none of its own.
const (
	prometheusPrefix           = "prometheus.io/"
	AnnotationPrometheusScrape = prometheusPrefix + "scrape"
	AnnotationPrometheusPort   = prometheusPrefix + "port"
	AnnotationPrometheusPath   = prometheusPrefix + "path"
)

// metricsPath is where the agent serves Prometheus metrics on its metrics port.
const metricsPath = "/metrics"

// Inject mutates pod in place (only call when Decide said Inject) and returns admission
// warnings: the override warnings Decide reported plus notes about the injection.
func Inject(pod *corev1.Pod, cfg Config) (warnings []string) {
	s, warnings := podSettings(pod, cfg)
	agent := agentContainer(cfg, s, pod.Spec.HostNetwork)
	if ca := caBundle(cfg.Report); ca != "" {
		addReporting(pod, &agent, cfg.Report, ca)
	} else if cfg.Report.URL != "" {
		warnings = append(warnings, "the kong-watcher manager's CA is not available yet: this pod's agent reports "+
			"to /metrics, /stats and logs only, not to its annotations and Events")
	}
	switch {
	case pod.Spec.Resources != nil:
		// Pod-level resources: the pod's QoS and budget are set for the pod as a whole, and
		// container requests must fit in it. The agent takes its share of that budget rather
		// than adding requests that could make the pod invalid.
		agent.Resources = corev1.ResourceRequirements{}
		warnings = append(warnings, "the pod sets pod-level resources: the kong-watcher agent has no "+
			"resources of its own and shares the pod's")
	case guaranteed(pod):
		// Guaranteed QoS (every container's requests equal its limits) must survive injection:
		// it decides the pod's eviction order and its CPU manager placement. The agent asks for
		// what it may use at most.
		agent.Resources.Requests = agent.Resources.Limits.DeepCopy()
	}

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
	if !pod.Spec.HostNetwork && !hasPrometheusAnnotation(pod.Annotations) {
		// Scrape the agent only where the pod says nothing about Prometheus: Kong's own
		// Prometheus plugin endpoint, when annotated, must keep being scraped as configured.
		pod.Annotations[AnnotationPrometheusScrape] = "true"
		pod.Annotations[AnnotationPrometheusPort] = strconv.Itoa(int(cfg.MetricsPort))
		pod.Annotations[AnnotationPrometheusPath] = metricsPath
	}

	if pod.Spec.HostNetwork {
		warnings = append(warnings, fmt.Sprintf("hostNetwork pod: the kong-watcher agent serves /metrics and /stats on "+
			"the node's loopback only (%s), not on the node's address; its stats still reach the pod's annotations",
			metricsAddr(cfg.MetricsPort, true)))
	}
	return warnings
}

// agentContainer builds the agent sidecar for one pod.
func agentContainer(cfg Config, s settings, hostNetwork bool) corev1.Container {
	c := corev1.Container{
		Name:            kwv1.AgentContainerName,
		Image:           cfg.Image,
		ImagePullPolicy: cfg.PullPolicy,
		Env: []corev1.EnvVar{
			{Name: agentenv.PodName.Env, ValueFrom: &corev1.EnvVarSource{
				FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}},
			{Name: agentenv.PodNamespace.Env, ValueFrom: &corev1.EnvVarSource{
				FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}},
			{Name: agentenv.LogLevel.Env, Value: s.logLevel},
			{Name: agentenv.JSONLog.Env, Value: agentenv.JSONLog.Render(s.jsonLog)},
			{Name: agentenv.ProcessName.Env, Value: s.processName},
			{Name: agentenv.StatsInterval.Env, Value: agentenv.StatsInterval.Render(s.statsInterval)},
			{Name: agentenv.MetricsAddr.Env, Value: metricsAddr(cfg.MetricsPort, hostNetwork)},
			// A dying agent is restarted inside its container, which never exits: a native
			// sidecar that restarts makes the whole pod NotReady.
			{Name: agentenv.Supervise.Env, Value: "true"},
		},
		Resources: *cfg.Resources.DeepCopy(),
		// No probes at all. A sidecar's readiness counts toward the pod's Ready condition, so
		// a readiness probe would let a monitoring hiccup take Kong out of its Service; a
		// liveness probe restarts the agent, and while a native sidecar restarts the pod is
		// NotReady too. A liveness probe would also fail for good where another process holds
		// the metrics port (the agent then keeps counting and retries the port). A stuck agent
		// costs Kong nothing (the kernel drops what the agent does not read), so no probe is
		// worth a Ready minute; /healthz and /readyz are for people and monitoring.
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
		SecurityContext:          agentSecurityContext(cfg.Privileged),
	}
	for _, e := range []corev1.EnvVar{
		{Name: agentenv.HighErrorRateThreshold.Env, Value: cfg.HighErrorRateThreshold},
		{Name: agentenv.HighLatencyP99Ms.Env, Value: cfg.HighLatencyP99Ms},
		{Name: agentenv.AlertMinRequests.Env, Value: cfg.AlertMinRequests},
		{Name: agentenv.Listeners.Env, Value: s.listeners},
	} {
		if e.Value != "" {
			c.Env = append(c.Env, e)
		}
	}
	if !hostNetwork {
		// With hostNetwork a containerPort is a host port: the scheduler would keep the pod off
		// any node where something else declares it, so the port is declared only in the
		// pod's own network namespace.
		c.Ports = []corev1.ContainerPort{{
			Name:          kwv1.MetricsPortName,
			ContainerPort: cfg.MetricsPort,
			Protocol:      corev1.ProtocolTCP,
		}}
	}
	return c
}

// caBundle is the manager CA to inject, "" when reporting is off or the CA is unknown.
func caBundle(r ReportConfig) string {
	if r.URL == "" || r.CA == nil {
		return ""
	}
	return string(r.CA())
}

// addReporting gives the agent what it needs to report to the manager: its URL and CA, and a
// projected service-account token with the manager's own audience, bound to this pod, rotated
// by the kubelet, mounted in the agent container only. It is not the API server's token:
// presented to the API server it is refused, and the pod's automountServiceAccountToken
// setting (which governs that one) is left as the user set it. Decide skips a pod that already
// has a volume of the token volume's name (volumeNameUser): keep the two in step.
func addReporting(pod *corev1.Pod, agent *corev1.Container, r ReportConfig, ca string) {
	exp := r.TokenExpirationSeconds
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{
		Name: kwv1.TokenVolumeName,
		VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: r.Audience, ExpirationSeconds: &exp, Path: kwv1.TokenFileName,
			}}},
		}},
	})
	agent.VolumeMounts = append(agent.VolumeMounts, corev1.VolumeMount{
		Name: kwv1.TokenVolumeName, MountPath: kwv1.TokenMountPath, ReadOnly: true,
	})
	agent.Env = append(agent.Env,
		corev1.EnvVar{Name: agentenv.ManagerURL.Env, Value: r.URL},
		corev1.EnvVar{Name: agentenv.ManagerCA.Env, Value: ca},
		corev1.EnvVar{Name: agentenv.TokenFile.Env, Value: kwv1.TokenMountPath + "/" + kwv1.TokenFileName},
	)
	if r.FallbackAddr != "" {
		agent.Env = append(agent.Env, corev1.EnvVar{Name: agentenv.ManagerAddr.Env, Value: r.FallbackAddr})
	}
}

// metricsAddr is the agent's METRICS_ADDR. In a hostNetwork pod the pod's network is the
// node's: the agent listens on loopback only, so /stats (hosts and paths of Kong's traffic)
// is never exposed on the node's address.
func metricsAddr(port int32, hostNetwork bool) string {
	if hostNetwork {
		return fmt.Sprintf("127.0.0.1:%d", port)
	}
	return fmt.Sprintf(":%d", port)
}

// guaranteed reports whether the pod is in the Guaranteed QoS class: every container (init
// containers too) has CPU and memory limits, and requests equal to them (a request left
// unset defaults to the limit).
func guaranteed(pod *corev1.Pod) bool {
	n := 0
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, name := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				lim, ok := c.Resources.Limits[name]
				if !ok {
					return false
				}
				if req, ok := c.Resources.Requests[name]; ok && req.Cmp(lim) != 0 {
					return false
				}
			}
			n++
		}
	}
	return n > 0
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
