// Package reporter runs the agent's Kubernetes reporter (agent/kube) against a real
// kube-apiserver and etcd started by controller-runtime's envtest: it patches a real pod's
// annotations, records Events, raises and clears alerts on synthetic stats, and survives the
// API server being stopped and started again.
//
// The API server comes from KUBEBUILDER_ASSETS; without it the test skips, unless
// KW_REQUIRE_INTEGRATION=1 (`make test`), in which case it fails.
//
// KW_UPDATE_DOCS=1 rewrites the `kubectl describe pod` block of docs/kubernetes.md with the
// output for the reported pod (kubectl from PATH).
package reporter

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

const (
	ns      = "kong"
	podName = "kong-gateway-7d9c5b8f6-x2k4q"
)

func requireOrSkip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("KW_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("KW_REQUIRE_INTEGRATION=1 but %s", why)
	}
	t.Skip(why)
}

// syntheticStats is the stats function the reporter reads; the test moves it.
type syntheticStats struct {
	mu sync.Mutex
	s  v1alpha1.Stats
}

func (b *syntheticStats) get() v1alpha1.Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.s
	s.Updated = time.Now().UTC()
	return s
}

// set makes the last window hold requests/errors at p99, and adds them to the total.
func (b *syntheticStats) set(requests, errors uint64, p99 float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	last := time.Now().UTC().Truncate(time.Second)
	w := v1alpha1.Summary{PeriodSeconds: 30, Requests: requests, Responses: requests, Errors: errors,
		ClientErrors:      requests / 50,
		RequestsPerSecond: float64(requests) / 30,
		LatencyMs:         v1alpha1.Latency{Count: requests, Avg: p99 / 4, P50: p99 / 5, P95: p99 / 2, P99: p99, Max: p99 * 1.5},
		Methods:           map[string]uint64{"GET": requests * 8 / 10, "POST": requests - requests*8/10},
		StatusClasses:     map[string]uint64{"2xx": requests - errors - requests/50, "4xx": requests / 50, "5xx": errors},
		Hosts: []v1alpha1.Row{{Name: "api.example.com", Requests: requests * 3 / 4, Errors: errors, P99Ms: p99},
			{Name: "www.example.com", Requests: requests - requests*3/4, P99Ms: p99 / 2}},
		Paths: []v1alpha1.Row{{Name: "GET /users/{id}", Requests: requests * 6 / 10, P99Ms: p99},
			{Name: "POST /orders", Requests: requests - requests*8/10, Errors: errors, P99Ms: p99},
			{Name: "GET /health", Requests: requests * 2 / 10, P99Ms: 1}},
		LastRequestTime: &last}
	t := b.s.Total
	t.Requests += w.Requests
	t.Responses += w.Responses
	t.Errors += w.Errors
	t.ClientErrors += w.ClientErrors
	t.RequestsPerSecond = w.RequestsPerSecond
	t.LatencyMs = w.LatencyMs
	t.PeriodSeconds += 30
	t.Methods = addCounts(t.Methods, w.Methods)
	t.StatusClasses = addCounts(t.StatusClasses, w.StatusClasses)
	t.Hosts, t.Paths, t.LastRequestTime = addRows(t.Hosts, w.Hosts), addRows(t.Paths, w.Paths), w.LastRequestTime
	b.s.Total, b.s.Window = t, w
	b.s.APIVersion, b.s.Kind, b.s.DataPath = v1alpha1.StatsAPIVersion, v1alpha1.StatsKind, "nginx-request"
	if b.s.Since.IsZero() {
		b.s.Since = time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	}
}

func addRows(a, b []v1alpha1.Row) []v1alpha1.Row {
	out := append([]v1alpha1.Row(nil), a...)
next:
	for _, r := range b {
		for i := range out {
			if out[i].Name == r.Name {
				out[i].Requests += r.Requests
				out[i].Errors += r.Errors
				out[i].P99Ms = max(out[i].P99Ms, r.P99Ms)
				continue next
			}
		}
		out = append(out, r)
	}
	return out
}

func addCounts(a, b map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range a {
		out[k] += v
	}
	for k, v := range b {
		out[k] += v
	}
	return out
}

type logBuf struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuf) add(prefix, args string) {
	l.mu.Lock()
	l.lines = append(l.lines, prefix+" "+args)
	l.mu.Unlock()
}

func (l *logBuf) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestReporterAgainstRealAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real API server (-short)")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		requireOrSkip(t, "KUBEBUILDER_ASSETS is not set (hack/k8s-binaries.sh prints the directory)")
	}
	// A fixed CertDir keeps the API server's serving certificate and port across Stop/Start,
	// so the reporter's client (and its TLS config) still fits the restarted server.
	env := &envtest.Environment{
		ControlPlane:             envtest.ControlPlane{APIServer: &envtest.APIServer{CertDir: t.TempDir()}},
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			t.Logf("stopping envtest: %v", err)
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	admin := kubernetes.NewForConfigOrDie(rest.CopyConfig(cfg))
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: podName,
			Labels: map[string]string{"app": "kong", v1alpha1.LabelInject: v1alpha1.LabelInjectValue},
			Annotations: map[string]string{
				v1alpha1.AnnotationInjected:         "v0.1.0",
				"example.com/owner":                 "platform-team",
				v1alpha1.AnnotationHighLatencyP99Ms: "250",
			}},
		Spec: corev1.PodSpec{
			ShareProcessNamespace: ptr(true),
			Containers: []corev1.Container{
				{Name: "proxy", Image: "kong:3.9", Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 8000}}},
				{Name: v1alpha1.AgentContainerName, Image: "ghcr.io/kong-watcher/agent:v0.1.0"},
			},
		},
	}
	if _, err := admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The reporter exactly as the agent builds it (KUBECONFIG, bounded QPS, record
	// broadcaster), with fast ticks.
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBECONFIG", kc)
	client, err := kube.ClientFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	stats := &syntheticStats{}
	stats.set(1200, 3, 40)
	logs := &logBuf{}
	rep, err := kube.New(kube.Options{
		Client: client, Namespace: ns, PodName: podName, Stats: stats.get,
		Interval: 500 * time.Millisecond, TrafficStatsInterval: 2 * time.Second,
		Thresholds:     kube.DefaultThresholds(),
		RequestTimeout: 2 * time.Second, InitialBackoff: 200 * time.Millisecond, MaxBackoff: time.Second,
		Log: funcr.New(logs.add, funcr.Options{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	gw := discovery.Gateway{Master: discovery.Process{PID: 1, Title: "nginx: master process /usr/local/openresty/nginx/sbin/nginx -p /usr/local/kong"},
		Workers: []discovery.Process{{PID: 2}, {PID: 3}}, Exe: "/usr/sbin/nginx"}
	rep.KongDetected(gw)
	rep.ProbesAttached(gw, "nginx-request")
	done := make(chan struct{})
	go func() { _ = rep.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	getPod := func() *corev1.Pod {
		p, err := admin.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
		if err != nil {
			t.Logf("get pod: %v", err)
			return nil
		}
		return p
	}
	eventually(t, 30*time.Second, "the annotations", func() bool {
		p := getPod()
		return p != nil && strings.HasPrefix(p.Annotations[v1alpha1.AnnotationRequests], "total=1200 ")
	})
	p := getPod()
	for k, want := range map[string]string{"example.com/owner": "platform-team", v1alpha1.AnnotationInjected: "v0.1.0",
		v1alpha1.AnnotationHighLatencyP99Ms: "250"} {
		if p.Annotations[k] != want {
			t.Errorf("annotation %s = %q, want %q (the reporter must leave it alone)", k, p.Annotations[k], want)
		}
	}
	if p.Labels["app"] != "kong" || p.Labels[v1alpha1.LabelInject] != "true" || len(p.Labels) != 2 {
		t.Errorf("labels changed: %v", p.Labels)
	}
	for _, k := range []string{v1alpha1.AnnotationLatency, v1alpha1.AnnotationMethods, v1alpha1.AnnotationStatus,
		v1alpha1.AnnotationTopHosts, v1alpha1.AnnotationTopPaths, v1alpha1.AnnotationLastRequest, v1alpha1.AnnotationStats} {
		if p.Annotations[k] == "" {
			t.Errorf("annotation %s missing", k)
		}
	}
	if th := rep.Thresholds(); th.LatencyP99Ms != 250 {
		t.Errorf("the pod's high-latency-p99-ms annotation was not read: %+v", th)
	}
	// Only the agent's field manager owns the kong-watcher.io/* keys it wrote.
	rv := p.ResourceVersion
	time.Sleep(1500 * time.Millisecond) // three ticks with unchanged stats
	if p2 := getPod(); p2.ResourceVersion != rv {
		t.Errorf("unchanged stats patched the pod (resourceVersion %s -> %s)", rv, p2.ResourceVersion)
	}

	reasons := func() map[string]int {
		evs, err := admin.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + podName})
		if err != nil {
			return nil
		}
		out := map[string]int{}
		for _, e := range evs.Items {
			if e.InvolvedObject.UID == p.UID && e.Source.Component == kube.Component {
				out[e.Reason] += int(max(e.Count, 1))
			}
		}
		return out
	}
	hasAll := func(rs ...string) func() bool {
		return func() bool {
			got := reasons()
			for _, r := range rs {
				if got[r] == 0 {
					return false
				}
			}
			return true
		}
	}
	eventually(t, 30*time.Second, "KongDetected, ProbesAttached, TrafficStats Events", hasAll(
		v1alpha1.ReasonKongDetected, v1alpha1.ReasonProbesAttached, v1alpha1.ReasonTrafficStats))

	// Alerts: 5xx over 5% of >= 20 requests, then p99 over the pod's 250 ms; then back to normal.
	stats.set(400, 60, 40)
	eventually(t, 30*time.Second, "HighErrorRate", hasAll(v1alpha1.ReasonHighErrorRate))
	stats.set(400, 2, 900)
	eventually(t, 30*time.Second, "HighErrorRateResolved and HighLatency", hasAll(v1alpha1.ReasonHighErrorRateResolved, v1alpha1.ReasonHighLatency))
	stats.set(400, 1, 35)
	eventually(t, 30*time.Second, "HighLatencyResolved", hasAll(v1alpha1.ReasonHighLatencyResolved))
	time.Sleep(1500 * time.Millisecond)
	got := reasons()
	for _, r := range []string{v1alpha1.ReasonHighErrorRate, v1alpha1.ReasonHighErrorRateResolved, v1alpha1.ReasonHighLatency, v1alpha1.ReasonHighLatencyResolved} {
		if got[r] != 1 {
			t.Errorf("%s recorded %d times, want once per episode", r, got[r])
		}
	}

	// The API server goes away for a while: the reporter keeps running (the stats func is still
	// read), logs one failure line, and writes the new numbers once the server is back.
	apiServer := env.ControlPlane.APIServer
	if err := apiServer.Stop(); err != nil {
		t.Fatalf("stopping the API server: %v", err)
	}
	stats.set(2000, 1, 30)
	time.Sleep(6 * time.Second)
	if n := logs.count("cannot report to the API server"); n != 1 {
		t.Errorf("while the API server was down: %d failure lines, want 1", n)
	}
	if err := apiServer.Start(); err != nil {
		t.Fatalf("restarting the API server: %v", err)
	}
	eventually(t, 60*time.Second, "the annotations after the restart", func() bool {
		p := getPod()
		return p != nil && strings.HasPrefix(p.Annotations[v1alpha1.AnnotationRequests], "total=4400 ")
	})
	eventually(t, 10*time.Second, "the recovery log line", func() bool { return logs.count("reachable again") == 1 })
	if n := logs.count("cannot report to the API server"); n != 1 {
		t.Errorf("after the outage: %d failure lines, want 1", n)
	}

	if os.Getenv("KW_UPDATE_DOCS") == "1" {
		updateDocs(t, env)
	}
}

func ptr[T any](v T) *T { return &v }

// updateDocs writes `kubectl describe pod` of the reported pod into docs/kubernetes.md,
// between the describe-begin / describe-end markers.
func updateDocs(t *testing.T, env *envtest.Environment) {
	t.Helper()
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, env.KubeConfig, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("kubectl", "--kubeconfig", kc, "describe", "pod", "-n", ns, podName).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl describe: %v\n%s", err, out)
	}
	_, file, _, _ := runtime.Caller(0)
	doc := filepath.Join(filepath.Dir(file), "..", "..", "..", "docs", "kubernetes.md")
	old, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- describe-begin -->\n", "<!-- describe-end -->"
	i, j := bytes.Index(old, []byte(begin)), bytes.Index(old, []byte(end))
	if i < 0 || j < i {
		t.Fatalf("%s has no %q ... %q markers", doc, begin, end)
	}
	var b bytes.Buffer
	b.Write(old[:i+len(begin)])
	b.WriteString("```console\n$ kubectl describe pod -n " + ns + " " + podName + "\n")
	b.Write(out)
	b.WriteString("```\n")
	b.Write(old[j:])
	if err := os.WriteFile(doc, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote kubectl describe output to %s", doc)
}
