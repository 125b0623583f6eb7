package rollup

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

var now0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

const ns = "gw"

// statsAt is an agent's Stats JSON updated at `at`: n requests in a 30 s window, the first
// errs of them 503s, at latency lat.
func statsAt(t *testing.T, at time.Time, n, errs int, lat time.Duration) string {
	t.Helper()
	clk := at.Add(-30 * time.Second)
	a := aggregate.New(aggregate.Options{Now: func() time.Time { return clk }})
	for _, status := range append(slices.Repeat([]int{503}, errs), slices.Repeat([]int{200}, n-errs)...) {
		a.Observe(&model.Request{Method: "GET", Host: "api.example.com", URI: "/v1/things", Status: status, Latency: lat, End: clk})
	}
	clk = at
	a.Rotate()
	return report.StatsJSON(a.Snapshot(), 1<<20)
}

func meta(apiVersion, kind, name string, owner *metav1.OwnerReference, stats string) *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: apiVersion, Kind: kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(name + "-uid"),
			Labels: map[string]string{v1alpha1.LabelInject: v1alpha1.LabelInjectValue}}}
	if owner != nil {
		m.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	if stats != "" {
		m.Annotations = map[string]string{v1alpha1.AnnotationStats: stats, "other": "x"}
	}
	return m
}

func controller(kind, name string) *metav1.OwnerReference {
	return metav1.NewControllerRef(&metav1.ObjectMeta{Name: name, UID: types.UID(name + "-uid")}, appsv1.SchemeGroupVersion.WithKind(kind))
}

type fixture struct {
	r     *Rollup
	apps  *k8sfake.Clientset
	meta  *metadatafake.FakeMetadataClient
	rec   *events.FakeRecorder
	clock time.Time
}

// newFixture: Deployment kong (3 replicas, ReplicaSet kong-1), StatefulSet db (1 replica) and
// DaemonSet edge (2 pods),
// the given pods, informers synced.
func newFixture(t *testing.T, template map[string]string, pods ...*metav1.PartialObjectMetadata) *fixture {
	t.Helper()
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	objs := []runtime.Object{meta("apps/v1", "ReplicaSet", "kong-1", controller("Deployment", "kong"), "")}
	for _, p := range pods {
		objs = append(objs, p)
	}
	f := &fixture{clock: now0, rec: events.NewFakeRecorder(100), meta: metadatafake.NewSimpleMetadataClient(scheme, objs...)}
	f.apps = k8sfake.NewClientset(
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kong", UID: "kong-uid", Annotations: map[string]string{"keep": "me"}},
			Spec:   appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Annotations: template}}},
			Status: appsv1.DeploymentStatus{Replicas: 3}},
		&appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db", UID: "db-uid"}, Status: appsv1.StatefulSetStatus{Replicas: 1}},
		&appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "edge", UID: "edge-uid"}, Status: appsv1.DaemonSetStatus{CurrentNumberScheduled: 2}})
	r, err := newRollup(f.apps, f.meta, f.rec, Options{Interval: 30 * time.Second, Now: func() time.Time { return f.clock }})
	if err != nil {
		t.Fatal(err)
	}
	f.r = r
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if !r.watch(ctx) {
		t.Fatal("informers did not sync")
	}
	return f
}

// annotations returns the workload's annotations and the parsed stats.
func (f *fixture) annotations(t *testing.T, kind, name string) (map[string]string, v1alpha1.Stats) {
	t.Helper()
	var obj metav1.Object
	var err error
	switch apps, ctx := f.apps.AppsV1(), context.Background(); kind {
	case "Deployment":
		obj, err = apps.Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	case "StatefulSet":
		obj, err = apps.StatefulSets(ns).Get(ctx, name, metav1.GetOptions{})
	default:
		obj, err = apps.DaemonSets(ns).Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	ann := obj.GetAnnotations()
	s, err := aggregate.ParseStats(ann[v1alpha1.AnnotationStats])
	if err != nil {
		t.Fatalf("%s %s stats: %v", kind, name, err)
	}
	return ann, s
}

func (f *fixture) patches() int {
	n := 0
	for _, a := range f.apps.Actions() {
		if a.GetVerb() == "patch" {
			n++
		}
	}
	return n
}

func (f *fixture) events() []string {
	var out []string
	for {
		select {
		case e := <-f.rec.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func TestTick(t *testing.T) {
	rs := controller("ReplicaSet", "kong-1")
	a := statsAt(t, now0, 100, 30, 5*time.Millisecond)
	b := statsAt(t, now0.Add(-2*time.Second), 300, 0, 50*time.Millisecond)
	stale := statsAt(t, now0.Add(-10*time.Minute), 40, 40, time.Second)
	f := newFixture(t, nil,
		meta("v1", "Pod", "kong-a", rs, a),
		meta("v1", "Pod", "kong-b", rs, b),
		meta("v1", "Pod", "kong-stale", rs, stale),
		meta("v1", "Pod", "kong-bad", rs, `{"apiVersion":"kong-watcher.io/v1alpha1","kind":"Stats","total":{"requests":-1}}`),
		meta("v1", "Pod", "kong-new", rs, ""), // not reporting yet
		// Valid, but longer than the manager ever writes: not the agent's, not cached, skipped.
		meta("v1", "Pod", "kong-big", rs, a+strings.Repeat(" ", maxPodStatsJSON)),
		meta("v1", "Pod", "db-0", controller("StatefulSet", "db"), statsAt(t, now0, 10, 0, time.Millisecond)),
		meta("v1", "Pod", "edge-x", controller("DaemonSet", "edge"), statsAt(t, now0, 5, 0, time.Millisecond)),
		meta("v1", "Pod", "job-x", controller("Job", "x"), a),
	)
	f.r.tick(context.Background())

	ann, got := f.annotations(t, "Deployment", "kong")
	var docs []v1alpha1.Stats
	for _, s := range []string{a, b, stale} {
		d, _ := aggregate.ParseStats(s)
		docs = append(docs, d)
	}
	docs[2].Window = v1alpha1.Summary{}
	want := aggregate.Merge(docs, aggregate.MergeOptions{})
	if got.Total.Requests != 440 || got.Window.Requests != 400 || got.Window.Errors != 30 {
		t.Errorf("total %d, window %d requests %d errors; want 440, 400 and 30", got.Total.Requests, got.Window.Requests, got.Window.Errors)
	}
	if w := report.Annotations(want, 0); ann[v1alpha1.AnnotationLatency] != w[v1alpha1.AnnotationLatency] || ann[v1alpha1.AnnotationRequests] != w[v1alpha1.AnnotationRequests] {
		t.Errorf("annotations %q, want %q", ann, w)
	}
	// Percentiles from the merged histograms: within half a bucket (1/32) of the exact value.
	if got.Window.LatencyMs.P99 != 50 || got.Window.LatencyMs.P50 != 50 || math.Abs(got.Total.LatencyMs.P99-1000) > 1000.0/32 {
		t.Errorf("window p50 %v p99 %v, total p99 %v", got.Window.LatencyMs.P50, got.Window.LatencyMs.P99, got.Total.LatencyMs.P99)
	}
	if ann[v1alpha1.AnnotationPods] != "2 of 3 pods reporting" || ann["keep"] != "me" {
		t.Errorf("pods %q, keep %q", ann[v1alpha1.AnnotationPods], ann["keep"])
	}
	if ann, _ := f.annotations(t, "StatefulSet", "db"); ann[v1alpha1.AnnotationPods] != "1 of 1 pods reporting" || !strings.HasPrefix(ann[v1alpha1.AnnotationRequests], "total=10 ") {
		t.Errorf("statefulset annotations %q", ann)
	}
	evs := f.events()
	if len(evs) != 2 || !strings.HasPrefix(evs[0], "Warning HighErrorRate error rate 7.5% over the last 32s (2 of 3 pods reporting): 30 of 400") ||
		!strings.HasPrefix(evs[1], "Normal TrafficStats last 32s (2 of 3 pods reporting): 400 requests") {
		t.Errorf("events %q", evs)
	}
	if ann, _ := f.annotations(t, "DaemonSet", "edge"); ann[v1alpha1.AnnotationPods] != "1 of 2 pods reporting" {
		t.Errorf("daemonset annotations %q", ann)
	}
	if n := f.patches(); n != 3 {
		t.Errorf("%d patches, want 3", n)
	}

	// Later, nothing changed but the time: no patch, no Event.
	f.clock = f.clock.Add(20 * time.Second)
	f.r.tick(context.Background())
	if n := f.patches(); n != 3 {
		t.Errorf("%d patches after an idle tick, want 3", n)
	}
	if evs := f.events(); len(evs) != 0 {
		t.Errorf("events after an idle tick: %q", evs)
	}

	// kong-a reports again without errors and kong-b goes away: the alert resolves, kong-b drops out.
	f.clock = f.clock.Add(10 * time.Second)
	f.setStats(t, "kong-a", statsAt(t, f.clock, 100, 0, 5*time.Millisecond))
	if err := f.meta.Resource(corev1.SchemeGroupVersion.WithResource("pods")).Namespace(ns).Delete(context.Background(), "kong-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, func() bool {
		_, ok, _ := f.r.pods.GetStore().GetByKey(ns + "/kong-b")
		p, _, _ := f.r.pods.GetStore().GetByKey(ns + "/kong-a")
		return !ok && strings.Contains(p.(*metav1.PartialObjectMetadata).Annotations[v1alpha1.AnnotationStats], `"errors":0`)
	})
	f.r.tick(context.Background())
	ann, got = f.annotations(t, "Deployment", "kong")
	if got.Window.Requests != 100 || got.Total.Requests != 140 || ann[v1alpha1.AnnotationPods] != "1 of 3 pods reporting" {
		t.Errorf("after kong-b left: window %d total %d, %q", got.Window.Requests, got.Total.Requests, ann[v1alpha1.AnnotationPods])
	}
	if evs := f.events(); len(evs) != 1 || !strings.HasPrefix(evs[0], "Normal HighErrorRateResolved error rate back to 0.0%") {
		t.Errorf("events %q", evs)
	}
	for _, a := range f.apps.Actions() {
		if p, ok := a.(k8stesting.PatchAction); ok {
			checkPatchKeys(t, p.GetPatch())
		}
	}
}

func (f *fixture) setStats(t *testing.T, pod, stats string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{v1alpha1.AnnotationStats: stats}}})
	if _, err := f.meta.Resource(corev1.SchemeGroupVersion.WithResource("pods")).Namespace(ns).Patch(context.Background(), pod, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("the informers never saw the change")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkPatchKeys fails unless body is a merge patch of metadata.annotations in
// v1alpha1.ReportedAnnotations only.
func checkPatchKeys(t *testing.T, body []byte) {
	t.Helper()
	var p map[string]map[string]map[string]any
	if err := json.Unmarshal(body, &p); err != nil || len(p) != 1 || len(p["metadata"]) != 1 {
		t.Fatalf("patch %s touches more than metadata.annotations (%v)", body, err)
	}
	for k := range p["metadata"]["annotations"] {
		if !slices.Contains(v1alpha1.ReportedAnnotations, k) {
			t.Errorf("patch touches %s", k)
		}
	}
}

// A template threshold overrides the default; an invalid one is ignored.
func TestTemplateThresholds(t *testing.T) {
	rs := controller("ReplicaSet", "kong-1")
	f := newFixture(t, map[string]string{v1alpha1.AnnotationHighErrorRateThreshold: "50%", v1alpha1.AnnotationHighLatencyP99Ms: "soon"},
		meta("v1", "Pod", "kong-a", rs, statsAt(t, now0, 100, 30, 2*time.Second)))
	f.r.tick(context.Background())
	evs := f.events()
	if len(evs) != 2 || !strings.HasPrefix(evs[0], "Warning HighLatency p99 latency 2.00s over the last 30s (1 of 3 pods reporting): 100 requests, p50 2.00s, max 2.00s, above the 1.00s threshold") {
		t.Errorf("events %q (30%% errors are below the template's 50%%; the latency threshold is the default)", evs)
	}
}

func TestPatchFor(t *testing.T) {
	live := map[string]string{"keep": "1", v1alpha1.AnnotationRequests: "old", v1alpha1.AnnotationLastRequest: "t", v1alpha1.AnnotationMethods: "GET=1"}
	want := map[string]string{v1alpha1.AnnotationRequests: "new", v1alpha1.AnnotationMethods: "GET=1", "not-ours": "x"}
	got := string(PatchFor(live, want))
	if got != `{"metadata":{"annotations":{"kong-watcher.io/last-request":null,"kong-watcher.io/requests":"new"}}}` {
		t.Errorf("patch %s", got)
	}
}

// Only updated, the periods and the total's rate may change without a patch.
func TestSameReport(t *testing.T) {
	s, _ := aggregate.ParseStats(statsAt(t, now0, 10, 1, time.Millisecond))
	base := report.Annotations(s, 0)
	later := s
	later.Updated = later.Updated.Add(time.Minute)
	later.Total.PeriodSeconds, later.Total.RequestsPerSecond, later.Window.PeriodSeconds = 99, 0.1, 31
	if !sameReport(base, report.Annotations(later, 0)) {
		t.Error("a moved clock counts as a change")
	}
	busier := s
	busier.Total.Requests++
	if sameReport(base, report.Annotations(busier, 0)) {
		t.Error("a changed count does not count as a change")
	}
	gone := maps.Clone(base)
	delete(gone, v1alpha1.AnnotationLastRequest)
	if sameReport(gone, base) || sameReport(base, gone) {
		t.Error("an added or removed key does not count as a change")
	}
}

func TestTruncate(t *testing.T) {
	long := strings.Repeat("é", 600)
	if got := truncate(long, maxNote); len(got) > maxNote || !strings.HasPrefix(long, got) || len(got) < maxNote-1 {
		t.Errorf("truncate: %d bytes", len(got))
	}
	if got := truncate("short", maxNote); got != "short" {
		t.Errorf("truncate(short) = %q", got)
	}
}

func TestTrimKeepsOnlyWhatIsRead(t *testing.T) {
	p := meta("v1", "Pod", "p", controller("ReplicaSet", "rs"), "{}")
	p.OwnerReferences = append(p.OwnerReferences, metav1.OwnerReference{Name: "not-controller"})
	p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}
	out, _ := trim(v1alpha1.AnnotationStats, maxPodStatsJSON)(p)
	m := out.(*metav1.PartialObjectMetadata)
	if len(m.Annotations) != 1 || len(m.OwnerReferences) != 1 || m.ManagedFields != nil || m.Labels != nil || m.UID != p.UID {
		t.Errorf("trimmed = %+v", m)
	}
	if fmt.Sprint(m.OwnerReferences[0].Name) != "rs" {
		t.Errorf("owner %v", m.OwnerReferences)
	}
}

// TestTrimDropsOversizedStats: the cache keeps a pod's stats annotation only up to the bound
// the manager writes it with; a longer one (written by whoever can patch or create the pod) is
// emptied, so it costs no memory and the pod is skipped as malformed.
func TestTrimDropsOversizedStats(t *testing.T) {
	for _, tc := range []struct {
		size int
		kept bool
	}{{maxPodStatsJSON, true}, {maxPodStatsJSON + 1, false}, {250 << 10, false}} {
		v := strings.Repeat("x", tc.size)
		out, _ := trim(v1alpha1.AnnotationStats, maxPodStatsJSON)(meta("v1", "Pod", "p", controller("ReplicaSet", "rs"), v))
		got, ok := out.(*metav1.PartialObjectMetadata).Annotations[v1alpha1.AnnotationStats]
		if !ok || (got == v) != tc.kept || !tc.kept && got != "" {
			t.Errorf("%d bytes: kept %d bytes (present %v), want kept %v", tc.size, len(got), ok, tc.kept)
		}
	}
}
