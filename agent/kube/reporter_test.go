package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

const ns, podName = "kong", "kong-0"

func pod(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: podName, UID: "uid-1",
		Labels: map[string]string{"app": "kong"}, Annotations: ann}}
}

// statsBox is a stats func the test can change.
type statsBox struct {
	mu sync.Mutex
	s  v1alpha1.Stats
}

func (b *statsBox) get() v1alpha1.Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.s
}

func (b *statsBox) set(f func(*v1alpha1.Stats)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(&b.s)
}

func stats(total, errs uint64, p99 float64) v1alpha1.Stats {
	now := time.Now()
	sum := v1alpha1.Summary{PeriodSeconds: 30, Requests: total, Responses: total, Errors: errs,
		RequestsPerSecond: float64(total) / 30, LatencyMs: v1alpha1.Latency{Count: total, P50: p99 / 2, P99: p99, Max: p99},
		Methods: map[string]uint64{"GET": total}, StatusClasses: map[string]uint64{"2xx": total - errs, "5xx": errs}}
	return v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind, Since: now.Add(-time.Hour), Updated: now,
		Total: sum, Window: sum}
}

type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		l.lines = append(l.lines, args)
		l.mu.Unlock()
	}, funcr.Options{})
}

func (l *logLines) count(sub string) int {
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

func newTest(t *testing.T, p *corev1.Pod, box *statsBox) (*Reporter, *fake.Clientset, *record.FakeRecorder, *logLines) {
	t.Helper()
	var objs []runtime.Object
	if p != nil {
		objs = append(objs, p)
	}
	c := fake.NewClientset(objs...)
	rec := record.NewFakeRecorder(100)
	logs := &logLines{}
	r, err := New(Options{Client: c, Namespace: ns, PodName: podName, Stats: box.get, Recorder: rec, Log: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	if p != nil {
		r.getPod(context.Background())
	}
	return r, c, rec, logs
}

func patches(c *fake.Clientset) []k8stesting.PatchAction {
	var out []k8stesting.PatchAction
	for _, a := range c.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			out = append(out, p)
		}
	}
	return out
}

func events(rec *record.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func TestPatchFor(t *testing.T) {
	if b := PatchFor(map[string]string{"a": "1"}, map[string]string{"a": "1"}); b != nil {
		t.Fatalf("no change must give no patch, got %s", b)
	}
	b := PatchFor(map[string]string{"a": "1", "b": "2", "c": "3"}, map[string]string{"a": "1", "b": "22", "d": "4"})
	want := `{"metadata":{"annotations":{"b":"22","c":null,"d":"4"}}}`
	if string(b) != want {
		t.Fatalf("patch\n got %s\nwant %s", b, want)
	}
}

func TestPatchesOnlyAgentKeysAndOnlyOnChange(t *testing.T) {
	box := &statsBox{s: stats(100, 1, 5)}
	r, c, _, _ := newTest(t, pod(map[string]string{"other.io/keep": "yes", v1alpha1.AnnotationInjected: "v1"}), box)
	ctx := context.Background()
	if !r.getPod(ctx) {
		t.Fatal("getPod failed")
	}
	if !r.Tick(ctx) {
		t.Fatal("first tick failed")
	}
	ps := patches(c)
	if len(ps) != 1 {
		t.Fatalf("want 1 patch, got %d", len(ps))
	}
	var body struct {
		Metadata map[string]map[string]*string `json:"metadata"`
	}
	if err := json.Unmarshal(ps[0].GetPatch(), &body); err != nil {
		t.Fatal(err)
	}
	if len(body.Metadata) != 1 || body.Metadata["annotations"] == nil {
		t.Fatalf("patch touches more than metadata.annotations: %s", ps[0].GetPatch())
	}
	want := report.Annotations(box.get(), 0)
	for k := range body.Metadata["annotations"] {
		if _, ok := want[k]; !ok || !strings.HasPrefix(k, v1alpha1.Domain+"/") {
			t.Errorf("patch touches %s", k)
		}
	}
	// Only the timestamps move: no patch.
	box.set(func(s *v1alpha1.Stats) { s.Updated = s.Updated.Add(30 * time.Second); s.Window.PeriodSeconds = 30.02 })
	r.Tick(ctx)
	if n := len(patches(c)); n != 1 {
		t.Fatalf("a tick with no change patched (%d patches)", n)
	}
	// New traffic: one patch, with only the changed keys.
	box.set(func(s *v1alpha1.Stats) { s.Total.Requests = 150; s.Updated = s.Updated.Add(30 * time.Second) })
	r.Tick(ctx)
	ps = patches(c)
	if len(ps) != 2 {
		t.Fatalf("want 2 patches, got %d", len(ps))
	}
	if p := string(ps[1].GetPatch()); strings.Contains(p, v1alpha1.AnnotationMethods) || !strings.Contains(p, v1alpha1.AnnotationRequests) {
		t.Errorf("second patch should carry only changed keys: %s", p)
	}
	got, err := c.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations["other.io/keep"] != "yes" || got.Annotations[v1alpha1.AnnotationInjected] != "v1" || got.Labels["app"] != "kong" {
		t.Errorf("other annotations or labels changed: %v %v", got.Annotations, got.Labels)
	}
	if got.Annotations[v1alpha1.AnnotationRequests] != report.Annotations(box.get(), 0)[v1alpha1.AnnotationRequests] {
		t.Errorf("requests annotation = %q", got.Annotations[v1alpha1.AnnotationRequests])
	}
	total := 0
	for k, v := range got.Annotations {
		total += len(k) + len(v)
	}
	if total > 64<<10 {
		t.Errorf("annotations total %d bytes", total)
	}
}

func TestAlertsRaiseOnceClearOnce(t *testing.T) {
	box := &statsBox{s: stats(10, 9, 5)} // 90% errors, but under the minimum request count
	r, _, rec, _ := newTest(t, pod(nil), box)
	now := time.Now()
	r.evaluate(box.get(), now)
	if ev := events(rec); len(ev) != 0 {
		t.Fatalf("under MinRequests: %v", ev)
	}
	box.s = stats(100, 10, 5) // 10% > 5%
	for range 3 {
		r.evaluate(box.get(), now)
	}
	ev := events(rec)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning HighErrorRate ") {
		t.Fatalf("want one HighErrorRate Warning, got %q", ev)
	}
	box.s = stats(100, 2, 1500) // errors fine, latency too high
	r.evaluate(box.get(), now)
	r.evaluate(box.get(), now)
	ev = events(rec)
	if len(ev) != 2 || !strings.HasPrefix(ev[0], "Normal HighErrorRateResolved ") || !strings.HasPrefix(ev[1], "Warning HighLatency ") {
		t.Fatalf("got %q", ev)
	}
	box.s = stats(0, 0, 0) // traffic stopped: the episode ends
	r.evaluate(box.get(), now)
	r.evaluate(box.get(), now)
	ev = events(rec)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Normal HighLatencyResolved ") {
		t.Fatalf("got %q", ev)
	}
}

func TestThresholdsFromPodAnnotations(t *testing.T) {
	box := &statsBox{s: stats(100, 10, 1500)}
	r, _, rec, logs := newTest(t, pod(map[string]string{
		v1alpha1.AnnotationHighErrorRateThreshold: "20%",
		v1alpha1.AnnotationHighLatencyP99Ms:       "2000",
	}), box)
	if !r.getPod(context.Background()) {
		t.Fatal("getPod")
	}
	if th := r.Thresholds(); th.ErrorRate != 0.2 || th.LatencyP99Ms != 2000 || th.MinRequests != DefaultMinRequests {
		t.Fatalf("thresholds %+v", th)
	}
	r.evaluate(box.get(), time.Now())
	if ev := events(rec); len(ev) != 0 {
		t.Fatalf("below the annotated thresholds, got %q", ev)
	}
	// An invalid annotation is ignored (default kept) and logged once.
	r.adoptPod(pod(map[string]string{v1alpha1.AnnotationHighErrorRateThreshold: "lots"}))
	r.adoptPod(pod(map[string]string{v1alpha1.AnnotationHighErrorRateThreshold: "lots"}))
	if th := r.Thresholds(); th.ErrorRate != DefaultErrorRateThreshold || th.LatencyP99Ms != DefaultLatencyP99Ms {
		t.Fatalf("thresholds %+v", th)
	}
	if n := logs.count("invalid alert threshold"); n != 1 {
		t.Fatalf("invalid threshold logged %d times", n)
	}
	for _, c := range []struct {
		in   string
		want float64
	}{{"5%", 0.05}, {"0.1", 0.1}, {"100%", 1}} {
		if f, err := ParseErrorRate(c.in); err != nil || f != c.want {
			t.Errorf("ParseErrorRate(%q) = %v, %v", c.in, f, err)
		}
	}
	for _, in := range []string{"", "-1%", "2", "abc"} {
		if _, err := ParseErrorRate(in); err == nil {
			t.Errorf("ParseErrorRate(%q) accepted", in)
		}
	}
	if f, err := ParseLatencyMs("1.5s"); err != nil || f != 1500 {
		t.Errorf("ParseLatencyMs(1.5s) = %v %v", f, err)
	}
}

func TestTrafficStatsEvent(t *testing.T) {
	box := &statsBox{s: stats(0, 0, 0)}
	r, _, rec, _ := newTest(t, pod(nil), box)
	r.o.TrafficStatsInterval = time.Minute
	now := time.Now()
	r.lastTraffic = now
	// No traffic yet: nothing until the interval has passed.
	r.evaluate(box.get(), now.Add(30*time.Second))
	if ev := events(rec); len(ev) != 0 {
		t.Fatalf("no traffic, before the interval: got %q", ev)
	}
	// A few requests (the kubelet's probes, say): not yet.
	box.set(func(s *v1alpha1.Stats) { *s = stats(3, 0, 5) })
	r.evaluate(box.get(), now.Add(35*time.Second))
	if ev := events(rec); len(ev) != 0 {
		t.Fatalf("a window of 3 requests (below ALERT_MIN_REQUESTS): got %q", ev)
	}
	// The first busy window: an Event at once, not a minute after the start.
	box.set(func(s *v1alpha1.Stats) { *s = stats(100, 0, 5) })
	r.evaluate(box.get(), now.Add(40*time.Second))
	ev := events(rec)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Normal TrafficStats ") || !strings.Contains(ev[0], "100 requests") {
		t.Fatalf("first traffic: got %q", ev)
	}
	// Then one per interval.
	r.evaluate(box.get(), now.Add(61*time.Second))
	r.evaluate(box.get(), now.Add(99*time.Second))
	if ev := events(rec); len(ev) != 0 {
		t.Fatalf("within the interval after the first: got %q", ev)
	}
	r.evaluate(box.get(), now.Add(101*time.Second))
	if ev := events(rec); len(ev) != 1 {
		t.Fatalf("one interval after the first: got %q", ev)
	}
	r.o.TrafficStatsInterval = 0
	r.evaluate(box.get(), now.Add(time.Hour))
	if ev := events(rec); len(ev) != 0 {
		t.Fatalf("interval 0 must record nothing, got %q", ev)
	}
}

func TestPodGoneStopsPatching(t *testing.T) {
	box := &statsBox{s: stats(100, 0, 5)}
	r, c, _, logs := newTest(t, pod(nil), box)
	ctx := context.Background()
	r.getPod(ctx)
	if err := c.CoreV1().Pods(ns).Delete(ctx, podName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !r.Tick(ctx) {
		t.Fatal("404 must not be retried")
	}
	box.set(func(s *v1alpha1.Stats) { s.Total.Requests = 500 })
	r.Tick(ctx)
	if n := len(patches(c)); n != 1 {
		t.Fatalf("after 404: %d patches", n)
	}
	if n := logs.count("gone"); n != 1 {
		t.Fatalf("404 logged %d times", n)
	}
}

func TestConflictRetriedAndFailuresLoggedOnce(t *testing.T) {
	box := &statsBox{s: stats(100, 0, 5)}
	r, c, _, logs := newTest(t, pod(nil), box)
	ctx := context.Background()
	r.getPod(ctx)
	var mode string
	c.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		switch mode {
		case "conflict":
			mode = ""
			return true, nil, apierrors.NewConflict(schema.GroupResource{Resource: "pods"}, podName, errors.New("try again"))
		case "down":
			return true, nil, apierrors.NewServiceUnavailable("etcd is away")
		}
		return false, nil, nil
	})
	mode = "conflict"
	if !r.Tick(ctx) {
		t.Fatal("a conflict must be retried at once")
	}
	if n := len(patches(c)); n != 2 {
		t.Fatalf("want 2 patch attempts, got %d", n)
	}
	mode = "down"
	for i := range 5 {
		box.set(func(s *v1alpha1.Stats) { s.Total.Requests = uint64(200 + i) })
		if r.Tick(ctx) {
			t.Fatal("a failed patch must ask for a retry")
		}
	}
	if n := logs.count("cannot report to the API server"); n != 1 {
		t.Fatalf("failure logged %d times, want 1", n)
	}
	mode = ""
	if !r.Tick(ctx) {
		t.Fatal("patch after recovery failed")
	}
	if n := logs.count("reachable again"); n != 1 {
		t.Fatalf("recovery logged %d times", n)
	}
	got, _ := c.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if !strings.HasPrefix(got.Annotations[v1alpha1.AnnotationRequests], "total=204 ") {
		t.Fatalf("after recovery the latest stats must be written: %q", got.Annotations[v1alpha1.AnnotationRequests])
	}
}

// Run with a dead API server keeps retrying with backoff, never blocks its caller, and writes
// the annotations once the server answers again.
func TestRunRetriesWithBackoff(t *testing.T) {
	box := &statsBox{s: stats(100, 0, 5)}
	c := fake.NewClientset(pod(nil))
	var mu sync.Mutex
	down, calls := true, 0
	c.PrependReactor("*", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if down {
			return true, nil, fmt.Errorf("dial tcp: connection refused")
		}
		return false, nil, nil
	})
	logs := &logLines{}
	r, err := New(Options{Client: c, Namespace: ns, PodName: podName, Stats: box.get, Recorder: record.NewFakeRecorder(100),
		Interval: time.Hour, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Log: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Run(ctx); close(done) }()
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	n := calls
	down = false
	mu.Unlock()
	if n < 4 || n > 60 {
		t.Errorf("%d attempts in 500ms with 10-50ms backoff", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := c.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
		if got != nil && got.Annotations[v1alpha1.AnnotationRequests] != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("annotations never written after the API server came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	if logs.count("cannot report to the API server") != 1 || logs.count("reachable again") != 1 {
		t.Fatalf("want one failure and one recovery line, got %q", logs.lines)
	}
}

func TestNotifierEvents(t *testing.T) {
	box := &statsBox{}
	rec := record.NewFakeRecorder(100)
	r, err := New(Options{Client: fake.NewClientset(pod(nil)), Namespace: ns, PodName: podName, Stats: box.get, Recorder: rec, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	gw := discovery.Gateway{Master: discovery.Process{PID: 7, Title: "nginx: master process"}, Workers: []discovery.Process{{PID: 8}}}
	r.ProbesAttached(gw, "nginx-request")
	r.ProbeAttachFailed(gw, errors.New("no symbol"))
	r.KongDetected(gw)
	time.Sleep(100 * time.Millisecond)
	if ev := events(rec); len(ev) != 0 {
		t.Fatalf("Events before the pod's UID is known must wait: %q", ev)
	}
	r.getPod(context.Background())
	var ev []string
	for len(ev) < 3 {
		select {
		case e := <-rec.Events:
			ev = append(ev, e)
		case <-time.After(5 * time.Second):
			t.Fatalf("got only %q", ev)
		}
	}
	slices.Sort(ev)
	if !strings.HasPrefix(ev[1], "Normal ProbesAttached ") || !strings.Contains(ev[1], "nginx-request") ||
		!strings.HasPrefix(ev[2], "Warning ProbeAttachFailed ") || !strings.Contains(ev[2], "no symbol") ||
		!strings.HasPrefix(ev[0], "Normal KongDetected ") || !strings.Contains(ev[0], "master PID 7") {
		t.Fatalf("got %q", ev)
	}
}

func TestNginxVersion(t *testing.T) {
	const exe = "/usr/sbin/nginx"
	if _, err := os.Stat(exe); err != nil {
		t.Skip("no nginx binary here")
	}
	v := NginxVersion(exe)
	if !strings.HasPrefix(v, "nginx/1.") {
		t.Fatalf("NginxVersion(%s) = %q", exe, v)
	}
	t.Logf("%s: %s", exe, v)
	if NginxVersion("/nonexistent") != "" {
		t.Fatal("a missing file must give no version")
	}
}

func TestClientLoggerDemotesRepeatedErrors(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	base := funcr.New(func(prefix, args string) {
		mu.Lock()
		lines = append(lines, args)
		mu.Unlock()
	}, funcr.Options{Verbosity: 0})
	l := ClientLogger(base, time.Hour).WithName("client-go")
	for range 5 {
		l.Error(errors.New("connection refused"), "Unable to write event (may retry after sleeping)")
	}
	l.WithValues("k", "v").Error(errors.New("forbidden"), "Server rejected event (will not retry!)")
	l.Info("hello")
	if len(lines) != 3 {
		t.Fatalf("want 2 errors and 1 info, got %q", lines)
	}
}
