package inject

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

func envOf(t *testing.T, pod *corev1.Pod) map[string]string {
	t.Helper()
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if c.Name == kwv1.AgentContainerName {
				env := map[string]string{}
				for _, e := range c.Env {
					env[e.Name] = e.Value
				}
				return env
			}
		}
	}
	t.Fatal("no agent container")
	return nil
}

func TestInjectOverridesReachTheEnvironment(t *testing.T) {
	cfg := testConfig()
	for _, tc := range []struct {
		pod      string
		want     map[string]string
		warnings int
	}{
		{"overrides", map[string]string{"LOG_LEVEL": "debug", "ENABLE_JSON_LOG": "false",
			"KONG_PROCESS_NAME": "openresty", "STATS_INTERVAL": "1m30s", "METRICS_ADDR": ":9464"}, 0},
		{"invalid-overrides", map[string]string{"LOG_LEVEL": "info", "ENABLE_JSON_LOG": "true",
			"KONG_PROCESS_NAME": "nginx", "STATS_INTERVAL": "30s", "METRICS_ADDR": ":9464"}, 5},
	} {
		t.Run(tc.pod, func(t *testing.T) {
			pod := decodeTestPod(t, podJSON(t, tc.pod))
			d := Decide(pod, "kong", cfg)
			if !d.Inject || len(d.Warnings) != tc.warnings {
				t.Fatalf("Decide = %+v, want inject with %d warnings", d, tc.warnings)
			}
			warnings := Inject(pod, cfg)
			if strings.Join(warnings, "|") != strings.Join(d.Warnings, "|") {
				t.Errorf("Inject warnings %q differ from Decide's %q", warnings, d.Warnings)
			}
			env := envOf(t, pod)
			for k, v := range tc.want {
				if env[k] != v {
					t.Errorf("%s = %q, want %q", k, env[k], v)
				}
			}
		})
	}
}

func TestPodSettingsEachOverride(t *testing.T) {
	cfg := testConfig()
	for _, tc := range []struct {
		key, value string
		ok         bool
	}{
		{kwv1.AnnotationLogLevel, "warn", true},
		{kwv1.AnnotationLogLevel, "Error", true},
		{kwv1.AnnotationLogLevel, "trace", false},
		{kwv1.AnnotationLogLevel, "", false},
		{kwv1.AnnotationJSONLog, "0", true},
		{kwv1.AnnotationJSONLog, "on", false},
		{kwv1.AnnotationProcessName, "nginx", true},
		{kwv1.AnnotationProcessName, "openresty 1.2", true},
		{kwv1.AnnotationProcessName, "fifteen-chars-x", true},
		{kwv1.AnnotationProcessName, "sixteen-chars-xx", false},
		{kwv1.AnnotationProcessName, "", false},
		// The agent's rule (api/agentenv): what /proc/<pid>/comm can hold, white space
		// around it ignored.
		{kwv1.AnnotationProcessName, " nginx", true},
		{kwv1.AnnotationProcessName, "ngi\tnx", true},
		{kwv1.AnnotationProcessName, "nginé", true},
		{kwv1.AnnotationProcessName, "ngi\nnx", false},
		{kwv1.AnnotationProcessName, "ngi\x00nx", false},
		{kwv1.AnnotationProcessName, "sbin/nginx", false},
		{kwv1.AnnotationStatsInterval, "1s", true},
		{kwv1.AnnotationStatsInterval, "1h", true},
		{kwv1.AnnotationStatsInterval, "999ms", false},
		{kwv1.AnnotationStatsInterval, "61m", false},
		{kwv1.AnnotationStatsInterval, "30", false},
		{kwv1.AnnotationStatsInterval, "-5s", false},
		{kwv1.AnnotationNativeSidecar, "FALSE", true},
		{kwv1.AnnotationNativeSidecar, "no", false},
		{kwv1.AnnotationListeners, "proxy=8000,8443;admin=8001,8444;status=8100", true},
		{kwv1.AnnotationListeners, " status=8100; proxy=8443,8000 ", true},
		{kwv1.AnnotationListeners, "admin=8001", false},
		{kwv1.AnnotationListeners, "proxy=8000;admin=8000", false},
		{kwv1.AnnotationListeners, "proxy:8000", false},
		{kwv1.AnnotationListeners, "", false},
	} {
		pod := &corev1.Pod{}
		pod.Annotations = map[string]string{tc.key: tc.value}
		s, warnings := podSettings(pod, cfg)
		def, _ := podSettings(&corev1.Pod{}, cfg)
		if tc.ok != (len(warnings) == 0) {
			t.Errorf("%s=%q: warnings %q, want ok=%v", tc.key, tc.value, warnings, tc.ok)
		}
		if !tc.ok && s != def {
			t.Errorf("%s=%q: invalid value changed the settings: %+v", tc.key, tc.value, s)
		}
		if !tc.ok && !strings.Contains(warnings[0], tc.key) {
			t.Errorf("warning %q does not name the annotation %s", warnings[0], tc.key)
		}
	}
}

// kong-watcher.io/listeners reaches the agent as KONG_WATCHER_LISTENERS, in its canonical
// form; without it (or when it is invalid) the agent gets no such variable and learns the
// names from the gateway.
func TestListenersAnnotation(t *testing.T) {
	cfg := testConfig()
	for value, want := range map[string]string{
		" status=8100; proxy=8443,8000;admin=8001 ": "proxy=8000,8443;admin=8001;status=8100",
		"admin=8001": "",
		"":           "",
	} {
		pod := &corev1.Pod{}
		pod.Labels = map[string]string{kwv1.LabelInject: "true"}
		pod.Annotations = map[string]string{kwv1.AnnotationListeners: value}
		pod.Spec.Containers = []corev1.Container{{Name: "proxy"}}
		Inject(pod, cfg)
		env, set := "", false
		for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
			for _, e := range c.Env {
				if c.Name == kwv1.AgentContainerName && e.Name == kwv1.EnvListeners {
					env, set = e.Value, true
				}
			}
		}
		if env != want || set != (want != "") {
			t.Errorf("%s=%q: %s=%q (set %v), want %q", kwv1.AnnotationListeners, value, kwv1.EnvListeners, env, set, want)
		}
	}
}

func TestDecideReasons(t *testing.T) {
	cfg := testConfig()
	labelled := func(mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{}
		p.Labels = map[string]string{kwv1.LabelInject: "true"}
		p.Spec.Containers = []corev1.Container{{Name: "proxy"}}
		if mut != nil {
			mut(p)
		}
		return p
	}
	always := corev1.ContainerRestartPolicyAlways
	f := false
	for _, tc := range []struct {
		name   string
		pod    *corev1.Pod
		ns     string
		reason string
		warn   bool
	}{
		{"nil pod", nil, "kong", ReasonNotLabelled, false},
		{"labelled", labelled(nil), "kong", ReasonInject, false},
		{"no labels", &corev1.Pod{}, "kong", ReasonNotLabelled, false},
		{"label false is a quiet opt-out", labelled(func(p *corev1.Pod) { p.Labels[kwv1.LabelInject] = "false" }), "kong", ReasonInvalidLabel, false},
		{"label typo warns", labelled(func(p *corev1.Pod) { p.Labels[kwv1.LabelInject] = "yes" }), "kong", ReasonInvalidLabel, true},
		{"excluded namespace", labelled(nil), "kube-system", ReasonExcludedNamespace, false},
		{"excluded wins over already injected", labelled(func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: kwv1.AgentContainerName})
		}), "kube-system", ReasonExcludedNamespace, false},
		{"agent as container", labelled(func(p *corev1.Pod) {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: kwv1.AgentContainerName})
		}), "kong", ReasonAlreadyInjected, false},
		{"windows", labelled(func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Windows} }), "kong", ReasonUnsupportedOS, false},
		{"linux explicit", labelled(func(p *corev1.Pod) { p.Spec.OS = &corev1.PodOS{Name: corev1.Linux} }), "kong", ReasonInject, false},
		{"hostPID", labelled(func(p *corev1.Pod) { p.Spec.HostPID = true }), "kong", ReasonHostPID, false},
		{"shareProcessNamespace false", labelled(func(p *corev1.Pod) { p.Spec.ShareProcessNamespace = &f }), "kong", ReasonShareProcessNamespaceDisabled, false},
		{"port used by native sidecar", labelled(func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "s", RestartPolicy: &always, Ports: []corev1.ContainerPort{{ContainerPort: 9464}}}}
		}), "kong", ReasonMetricsPortConflict, false},
		{"port used by a plain init container is free later", labelled(func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "i", Ports: []corev1.ContainerPort{{ContainerPort: 9464}}}}
		}), "kong", ReasonInject, false},
		{"token volume name taken", labelled(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "config"}, {Name: kwv1.TokenVolumeName}}
		}), "kong", ReasonVolumeNameConflict, false},
		{"other volumes are no conflict", labelled(func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "config"}, {Name: kwv1.TokenVolumeName + "-2"}}
		}), "kong", ReasonInject, false},
		{"same port over UDP is no conflict", labelled(func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 9464, Protocol: corev1.ProtocolUDP}}
		}), "kong", ReasonInject, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.pod, tc.ns, cfg)
			if d.Reason != tc.reason || d.Inject != (tc.reason == ReasonInject) || d.Message == "" {
				t.Errorf("Decide = %+v, want reason %s", d, tc.reason)
			}
			if tc.warn != (len(d.Warnings) > 0) {
				t.Errorf("warnings %q, want some: %v", d.Warnings, tc.warn)
			}
		})
	}
}

func TestInjectDoesNotShareConfigState(t *testing.T) {
	cfg := testConfig()
	a, b := &corev1.Pod{}, &corev1.Pod{}
	Inject(a, cfg)
	Inject(b, cfg)
	a.Spec.InitContainers[0].Resources.Limits[corev1.ResourceCPU] = resource.MustParse("7")
	if got := cfg.Resources.Limits[corev1.ResourceCPU]; got.String() != "200m" {
		t.Errorf("mutating an injected pod changed the Config: cpu limit %s", got.String())
	}
	if got := b.Spec.InitContainers[0].Resources.Limits[corev1.ResourceCPU]; got.String() != "200m" {
		t.Errorf("two pods share resource maps: %s", got.String())
	}
}

// TestAlertThresholdsReachTheAgent: thresholds set on the webhook become the agent's env,
// in the agent's own syntax; unset ones are left out so the agent's defaults apply.
func TestAlertThresholdsReachTheAgent(t *testing.T) {
	cfg := testConfig()
	envOf := func(cfg Config) map[string]string {
		pod := decodeTestPod(t, podJSON(t, "kong"))
		Inject(pod, cfg)
		env := map[string]string{}
		for _, e := range pod.Spec.InitContainers[len(pod.Spec.InitContainers)-1].Env {
			env[e.Name] = e.Value
		}
		return env
	}
	for _, k := range []string{kwv1.EnvHighErrorRateThreshold, kwv1.EnvHighLatencyP99Ms, kwv1.EnvAlertMinRequests} {
		if v, ok := envOf(cfg)[k]; ok {
			t.Errorf("unset %s injected as %q", k, v)
		}
	}
	cfg.HighErrorRateThreshold, cfg.HighLatencyP99Ms, cfg.AlertMinRequests = "2.5%", "250", "50"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	env := envOf(cfg)
	if env[kwv1.EnvHighErrorRateThreshold] != "2.5%" || env[kwv1.EnvHighLatencyP99Ms] != "250" || env[kwv1.EnvAlertMinRequests] != "50" {
		t.Errorf("agent env %v", env)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig is invalid: %v", err)
	}
	d := DefaultConfig()
	if d.Image != "kong-watcher/agent:dev" || d.PullPolicy != corev1.PullIfNotPresent || d.LogLevel != "info" ||
		!d.JSONLog || d.ProcessName != "nginx" || d.StatsInterval != 30*time.Second || !d.NativeSidecar ||
		d.MetricsPort != 9464 || d.Privileged {
		t.Errorf("DefaultConfig = %+v", d)
	}
	for _, tc := range []struct {
		name string
		mut  func(*Config)
		want string
	}{
		{"empty image", func(c *Config) { c.Image = "" }, "image must not be empty"},
		{"image with space", func(c *Config) { c.Image = "a b" }, "whitespace"},
		{"pull policy", func(c *Config) { c.PullPolicy = "Sometimes" }, "pull policy"},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, "log level"},
		{"process name", func(c *Config) { c.ProcessName = "a/b" }, "process name"},
		{"interval short", func(c *Config) { c.StatsInterval = time.Millisecond }, "stats interval"},
		{"interval long", func(c *Config) { c.StatsInterval = 2 * time.Hour }, "stats interval"},
		{"port 0", func(c *Config) { c.MetricsPort = 0 }, "metrics port"},
		{"port high", func(c *Config) { c.MetricsPort = 70000 }, "metrics port"},
		{"version", func(c *Config) { c.AgentVersion = "" }, "agent version"},
		{"excluded empty", func(c *Config) { c.ExcludedNamespaces = []string{""} }, "excluded"},
		{"request over limit", func(c *Config) {
			c.Resources.Requests[corev1.ResourceMemory] = resource.MustParse("1Gi")
		}, "exceeds its limit"},
		{"negative limit", func(c *Config) {
			c.Resources.Limits[corev1.ResourceCPU] = resource.MustParse("-1")
		}, "negative"},
		{"error rate", func(c *Config) { c.HighErrorRateThreshold = "150%" }, "high error rate threshold"},
		{"latency", func(c *Config) { c.HighLatencyP99Ms = "-5" }, "high latency"},
		{"min requests", func(c *Config) { c.AlertMinRequests = "0" }, "alert min requests"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.mut(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// Several problems are all reported at once.
	c := DefaultConfig()
	c.Image, c.MetricsPort = "", -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "image") || !strings.Contains(err.Error(), "metrics port") {
		t.Errorf("Validate() = %v, want both errors", err)
	}
}
