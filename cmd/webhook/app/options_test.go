package app

import (
	"flag"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	t.Setenv(EnvPodNamespace, "kw-ns")
	t.Setenv(EnvAgentImage, "registry.example.com/kw/agent:v1")
	o := NewOptions()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o, o.Complete()
}

func TestOptionsDefaults(t *testing.T) {
	o, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if o.Namespace != "kw-ns" || o.Agent.Image != "registry.example.com/kw/agent:v1" {
		t.Errorf("namespace %q image %q: POD_NAMESPACE / AGENT_IMAGE not used", o.Namespace, o.Agent.Image)
	}
	r := o.Agent.Resources
	for name, want := range map[string]string{
		"cpu request": "100m", "memory request": "128Mi", "cpu limit": "200m", "memory limit": "256Mi",
	} {
		var got string
		switch name {
		case "cpu request":
			got = r.Requests.Cpu().String()
		case "memory request":
			got = r.Requests.Memory().String()
		case "cpu limit":
			got = r.Limits.Cpu().String()
		case "memory limit":
			got = r.Limits.Memory().String()
		}
		if got != want {
			t.Errorf("agent %s = %s, want %s", name, got, want)
		}
	}
	if strings.Join(o.Agent.ExcludedNamespaces, ",") != "kube-system,kw-ns" {
		t.Errorf("excluded namespaces = %v, want kube-system plus the webhook's own", o.Agent.ExcludedNamespaces)
	}
	if o.DisableCertRotation || !o.LeaderElect || o.MetricsAddr != "0" || o.WebhookPort != 9443 ||
		o.ServiceName != DefaultServiceName || o.SecretName != DefaultSecretName || o.WebhookConfigName != DefaultWebhookConfigName {
		t.Errorf("unexpected defaults: %+v", o)
	}
	if !o.Agent.NativeSidecar || o.Agent.Privileged {
		t.Errorf("agent defaults: native %v privileged %v", o.Agent.NativeSidecar, o.Agent.Privileged)
	}
}

func TestOptionsFlags(t *testing.T) {
	o, err := parse(t, "--agent-image=img:2", "--agent-image-pull-policy=Always", "--agent-cpu-limit=1",
		"--agent-memory-request=64Mi", "--agent-log-level=debug", "--agent-json-log=false",
		"--agent-process-name=openresty", "--agent-stats-interval=10s", "--agent-native-sidecar=false",
		"--agent-privileged", "--excluded-namespaces=a, b", "--webhook-extra-dns-names=localhost,x.example",
		"--disable-cert-rotation", "--agent-high-error-rate-threshold=2%", "--agent-high-latency-p99-ms=300",
		"--agent-alert-min-requests=40")
	if err != nil {
		t.Fatal(err)
	}
	a := o.Agent
	if a.HighErrorRateThreshold != "2%" || a.HighLatencyP99Ms != "300" || a.AlertMinRequests != "40" {
		t.Errorf("alert thresholds from flags: %q %q %q", a.HighErrorRateThreshold, a.HighLatencyP99Ms, a.AlertMinRequests)
	}
	if a.Image != "img:2" || a.PullPolicy != corev1.PullAlways || a.Resources.Limits.Cpu().String() != "1" ||
		a.Resources.Requests.Memory().String() != "64Mi" || a.LogLevel != "debug" || a.JSONLog ||
		a.ProcessName != "openresty" || a.StatsInterval != 10*time.Second || a.NativeSidecar || !a.Privileged {
		t.Errorf("agent config from flags = %+v", a)
	}
	if strings.Join(a.ExcludedNamespaces, ",") != "a,b,kw-ns" {
		t.Errorf("excluded = %v", a.ExcludedNamespaces)
	}
	if strings.Join(o.ExtraDNSNames, ",") != "localhost,x.example" || !o.DisableCertRotation {
		t.Errorf("extra DNS names %v, disable rotation %v", o.ExtraDNSNames, o.DisableCertRotation)
	}
}

func TestOptionsInvalid(t *testing.T) {
	for _, args := range [][]string{
		{"--agent-cpu-request=lots"},
		{"--agent-image-pull-policy=Sometimes"},
		{"--agent-log-level=loud"},
		{"--agent-cpu-request=2", "--agent-cpu-limit=1"}, // request above limit: every patched pod would be rejected
		{"--webhook-port=0"},
		{"--agent-high-error-rate-threshold=lots"},
		{"--agent-high-latency-p99-ms=0"},
		{"--agent-alert-min-requests=-1"},
		{"--webhook-service-name="},
	} {
		if _, err := parse(t, args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}

func TestFallbackAddrFromServiceLinks(t *testing.T) {
	t.Setenv("KONG_WATCHER_WEBHOOK_SERVICE_SERVICE_HOST", "10.96.3.4")
	t.Setenv("KONG_WATCHER_WEBHOOK_SERVICE_SERVICE_PORT", "443")
	t.Setenv("KONG_WATCHER_WEBHOOK_SERVICE_SERVICE_PORT_HTTPS", "443")
	o := NewOptions()
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if o.Agent.Report.FallbackAddr != "10.96.3.4:443" {
		t.Errorf("fallback address %q, want 10.96.3.4:443", o.Agent.Report.FallbackAddr)
	}
	// A URL of the operator's own choosing: the Service's address may not be the manager's.
	o = NewOptions()
	o.ManagerURL = "https://manager.example.com/report/v1alpha1"
	if err := o.Complete(); err != nil {
		t.Fatal(err)
	}
	if o.Agent.Report.FallbackAddr != "" {
		t.Errorf("fallback address %q with an explicit --manager-url, want none", o.Agent.Report.FallbackAddr)
	}
}
