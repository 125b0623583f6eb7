// Package reporter runs the agent's reporter (agent/kube) against the manager's real report
// endpoint (webhook/ingest) and a real kube-apiserver and etcd started by controller-runtime's
// envtest: the endpoint verifies the agent's pod-bound token with TokenReviews and writes the
// pod's statistics annotations and the agent's Events with the manager's identity, as
// config/default grants and constrains it. It raises and clears alerts on synthetic stats,
// survives the manager and the API server being stopped and started again, and refuses bad
// tokens, bodies and floods without writing anything.
//
// The API server comes from KUBEBUILDER_ASSETS, kubectl (to render config/default) from PATH;
// without them the tests skip, unless KW_REQUIRE_INTEGRATION=1 (`make test`), in which case
// they fail.
//
// KW_UPDATE_DOCS=1 rewrites the `kubectl describe pod` block of docs/kubernetes.md with the
// output for the reported pod (kubectl from PATH).
package reporter

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
)

const (
	ns      = "kong"
	podName = "kong-gateway-7d9c5b8f6-x2k4q"
)

// syntheticStats is the stats function the reporter reads; the test moves it.
type syntheticStats struct {
	mu    sync.Mutex
	s     v1alpha1.Stats
	calls atomic.Int64
}

func (b *syntheticStats) get() v1alpha1.Stats {
	b.calls.Add(1)
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
	w := v1alpha1.Summary{PeriodSeconds: 30, ListenerSummary: v1alpha1.ListenerSummary{Requests: requests, Responses: requests, Errors: errors,
		ClientErrors:      requests / 50,
		RequestsPerSecond: float64(requests) / 30,
		LatencyMs:         v1alpha1.Latency{Count: requests, Avg: p99 / 4, P50: p99 / 5, P95: p99 / 2, P99: p99, Max: p99 * 1.5},
		Methods:           map[string]uint64{"GET": requests * 8 / 10, "POST": requests - requests*8/10},
		StatusClasses:     map[string]uint64{"2xx": requests - errors - requests/50, "4xx": requests / 50, "5xx": errors},
		LastRequestTime:   &last},
		Hosts: []v1alpha1.Row{{Name: "api.example.com", Requests: requests * 3 / 4, Errors: errors, P99Ms: p99},
			{Name: "www.example.com", Requests: requests - requests*3/4, P99Ms: p99 / 2}},
		Paths: []v1alpha1.Row{{Name: "GET /users/{id}", Requests: requests * 6 / 10, P99Ms: p99},
			{Name: "POST /orders", Requests: requests - requests*8/10, Errors: errors, P99Ms: p99},
			{Name: "GET /health", Requests: requests * 2 / 10, P99Ms: 1}}}
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

// TestReporterAgainstRealAPIServer runs the agent's reporter against the real report endpoint,
// which writes with the manager's real identity (its rendered ClusterRole, under the statistics
// policy) to a real API server: the pod's statistics annotations, the agent's Events, the pod's
// threshold annotations read back, and recovery from the manager and then the API server
// going away.
func TestReporterAgainstRealAPIServer(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	admin := c.admin
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "kong"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// As the webhook leaves it (without the token volume and the env, which nothing here reads).
	// No kubelet or scheduler runs: the pod stays Pending, which the manager does not mind.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: podName,
			Labels: map[string]string{"app": "kong", v1alpha1.LabelInject: v1alpha1.LabelInjectValue},
			Annotations: map[string]string{
				v1alpha1.AnnotationInjected:         "v0.1.0",
				"example.com/owner":                 "platform-team",
				v1alpha1.AnnotationHighLatencyP99Ms: "250",
			}},
		Spec: corev1.PodSpec{
			ServiceAccountName:    "kong",
			ShareProcessNamespace: ptr(true),
			Containers: []corev1.Container{
				{Name: "proxy", Image: "kong:3.9", Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 8000}}},
				{Name: v1alpha1.AgentContainerName, Image: "ghcr.io/kong-watcher/agent:v0.1.0"},
			},
		},
	}
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The projected token, as the kubelet writes it.
	tokenFile := filepath.Join(t.TempDir(), v1alpha1.TokenFileName)
	if err := os.WriteFile(tokenFile, []byte(agentToken(t, c, pod)), 0o600); err != nil {
		t.Fatal(err)
	}

	m := startManager(t, c, "127.0.0.1:0", fastAgent)
	stats := &syntheticStats{}
	stats.set(1200, 3, 40)
	logs := &logBuf{}
	// The reporter exactly as the agent builds it from KONG_WATCHER_MANAGER_URL, _CA and
	// _TOKEN_FILE, with fast ticks.
	rep, err := kube.New(kube.Options{
		URL: m.URL, CA: m.CA, TokenFile: tokenFile, Namespace: ns, PodName: podName, Stats: stats.get,
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
	go func() { rep.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	getPod := func() *corev1.Pod {
		p, err := admin.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
		if err != nil {
			t.Logf("get pod: %v", err)
			return nil
		}
		return p
	}
	reported := func(total uint64) func() bool {
		return func() bool {
			p := getPod()
			return p != nil && strings.HasPrefix(p.Annotations[v1alpha1.AnnotationRequests], fmt.Sprintf("total=%d ", total))
		}
	}
	eventually(t, 30*time.Second, "the annotations", reported(1200))
	p := getPod()
	for k, want := range map[string]string{"example.com/owner": "platform-team", v1alpha1.AnnotationInjected: "v0.1.0",
		v1alpha1.AnnotationHighLatencyP99Ms: "250"} {
		if p.Annotations[k] != want {
			t.Errorf("annotation %s = %q, want %q (the manager must leave it alone)", k, p.Annotations[k], want)
		}
	}
	if p.Labels["app"] != "kong" || p.Labels[v1alpha1.LabelInject] != "true" || len(p.Labels) != 2 {
		t.Errorf("labels changed: %v", p.Labels)
	}
	for _, k := range []string{v1alpha1.AnnotationLatency, v1alpha1.AnnotationMethods, v1alpha1.AnnotationStatus,
		v1alpha1.AnnotationTopHosts, v1alpha1.AnnotationTopPaths, v1alpha1.AnnotationLastRequest} {
		if p.Annotations[k] == "" {
			t.Errorf("annotation %s missing", k)
		}
	}
	var doc v1alpha1.Stats
	if err := json.Unmarshal([]byte(p.Annotations[v1alpha1.AnnotationStats]), &doc); err != nil ||
		doc.Kind != v1alpha1.StatsKind || doc.Total.Requests != 1200 || doc.Total.Errors != 3 || len(doc.Total.Paths) != 3 {
		t.Errorf("annotation %s = %.200s (%v), want the Stats JSON of 1200 requests", v1alpha1.AnnotationStats, p.Annotations[v1alpha1.AnnotationStats], err)
	}
	// The manager's field manager owns exactly the statistics annotations it wrote.
	for _, mf := range p.ManagedFields {
		if mf.Manager != ingest.FieldManager {
			continue
		}
		var owned map[string]any
		_ = json.Unmarshal(mf.FieldsV1.Raw, &owned)
		meta, _ := owned["f:metadata"].(map[string]any)
		ann, _ := meta["f:annotations"].(map[string]any)
		for k := range ann {
			if !slices.Contains(v1alpha1.ReportedAnnotations, strings.TrimPrefix(k, "f:")) {
				t.Errorf("the manager's field manager owns %s", k)
			}
		}
		if len(owned) != 1 || len(meta) != 1 || len(ann) == 0 {
			t.Errorf("the manager's field manager owns %s", mf.FieldsV1.Raw)
		}
	}
	if th := rep.Thresholds(); th.LatencyP99Ms != 250 {
		t.Errorf("the pod's high-latency-p99-ms annotation did not reach the agent: %+v", th)
	}

	reasons := func() map[string]int { return agentEvents(t, c, pod) }
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

	// `kubectl annotate pod ... kong-watcher.io/high-error-rate-threshold=20%`: the next report's
	// answer carries it to the agent, and 15% errors raise nothing.
	annotate := func(v string) {
		t.Helper()
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{v1alpha1.AnnotationHighErrorRateThreshold: v}}})
		if _, err := admin.CoreV1().Pods(ns).Patch(ctx, podName, types.MergePatchType, b, metav1.PatchOptions{FieldManager: "kubectl-annotate"}); err != nil {
			t.Fatal(err)
		}
	}
	annotate("20%")
	eventually(t, 10*time.Second, "the 20% threshold at the agent", func() bool { return rep.Thresholds().ErrorRate == 0.20 })
	stats.set(400, 60, 40)
	time.Sleep(1500 * time.Millisecond) // three ticks
	if got := reasons(); got[v1alpha1.ReasonHighErrorRate] != 0 {
		t.Errorf("HighErrorRate at 15%% errors with the pod's 20%% threshold: %v", got)
	}
	annotate("10%")
	eventually(t, 10*time.Second, "the 10% threshold at the agent", func() bool { return rep.Thresholds().ErrorRate == 0.10 })

	// Alerts: 5xx over 10% of >= 20 requests, then p99 over the pod's 250 ms; then back to normal.
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
	const failing, recovered = "retries with backoff", "reachable again"
	if n := logs.count(failing); n != 0 {
		t.Errorf("reporting failed while everything was up:\n%s", logs)
	}

	// The manager goes away (a rollout): the agent keeps counting, and a new manager at the same
	// address (a new Authenticator: the token is reviewed again) gets the latest state,
	// including an alert raised meanwhile.
	m.stop()
	calls := stats.calls.Load()
	stats.set(1000, 200, 30)
	eventually(t, 10*time.Second, "the agent noticing the manager is gone", func() bool { return logs.count(failing) == 1 })
	time.Sleep(2 * time.Second)
	if stats.calls.Load() == calls {
		t.Errorf("the agent stopped reading its stats while the manager was away")
	}
	m = startManager(t, c, m.addr, fastAgent)
	total := stats.get().Total.Requests
	eventually(t, 30*time.Second, "the latest stats after the manager's restart", reported(total))
	eventually(t, 30*time.Second, "the alert raised while the manager was away", func() bool { return reasons()[v1alpha1.ReasonHighErrorRate] == 2 })
	eventually(t, 10*time.Second, "the recovery log line", func() bool { return logs.count(recovered) == 1 })
	if n := m.Reviews.n.Load(); n != 1 {
		t.Errorf("the new manager sent %d TokenReviews for one agent, want 1", n)
	}

	// The API server goes away: the manager answers 503 (it cannot write), the agent keeps
	// running, logs one failure line, and delivers the new numbers once the server is back.
	apiServer := env.ControlPlane.APIServer
	if err := apiServer.Stop(); err != nil {
		t.Fatalf("stopping the API server: %v", err)
	}
	stopped := true
	defer func() {
		if stopped {
			if err := apiServer.Start(); err != nil {
				t.Errorf("restarting the API server: %v", err)
			}
		}
	}()
	stats.set(2000, 1, 30)
	eventually(t, 20*time.Second, "a 503 from the manager", func() bool { return m.Statuses.get(http.StatusServiceUnavailable) > 0 })
	time.Sleep(2 * time.Second)
	if n := logs.count(failing); n != 2 {
		t.Errorf("while the API server was down: %d failure lines in all, want 2 (one per outage)\n%s", n, logs)
	}
	start := time.Now()
	if err := apiServer.Start(); err != nil {
		t.Fatalf("restarting the API server: %v", err)
	}
	stopped = false
	t.Logf("API server restarted in %v; the manager answered %v meanwhile", time.Since(start).Round(time.Millisecond), m.Statuses)
	total = stats.get().Total.Requests
	eventually(t, 60*time.Second, "the annotations after the API server's restart", reported(total))
	eventually(t, 10*time.Second, "the recovery log line", func() bool { return logs.count(recovered) == 2 })
	if n := logs.count(failing); n != 2 {
		t.Errorf("after the outages: %d failure lines, want 2", n)
	}
	for code := 500; code < 600; code++ {
		if n := m.Statuses.get(code); n > 0 && code != http.StatusServiceUnavailable {
			t.Errorf("the manager answered %d %d times", code, n)
		}
	}

	if os.Getenv("KW_UPDATE_DOCS") == "1" {
		// Let the last Events land first.
		eventually(t, 30*time.Second, "the TrafficStats Events after the restart", func() bool { return reasons()[v1alpha1.ReasonTrafficStats] >= 3 })
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

// fastAgent: the agent here reports every 500ms, faster than a real agent may (1s at least).
func fastAgent(o *ingest.Options) { o.PodReportBurst = 1 << 20 }
