package envtest

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/report"
	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"
	"github.com/kong-watcher/kong-watcher/webhook/rollup"
)

// TestRollup: the manager's rollup writes the combined stats of a Deployment's and a
// StatefulSet's pods on them, through a real API server. envtest runs no controllers, so the
// test plays the Deployment controller: it creates the ReplicaSet, the pods and the status.
func TestRollup(t *testing.T) {
	_, cfg := startEnv(t)
	c := newClient(t, cfg)
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := t.Context()
	ns := "rollup-" + rand.String(5)
	ensureNamespace(t, c, ns)

	// A Deployment whose template lowers the error-rate threshold to 2% (the default, 5%,
	// would not fire on the pods' 3%), with an annotation of its own the rollup must keep.
	kong := &metav1.LabelSelector{MatchLabels: map[string]string{"app": "kong"}}
	deploy := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kong", Annotations: map[string]string{"example.com/owner": "gateway-team"}},
		Spec: appsv1.DeploymentSpec{Selector: kong, Template: rollupTemplate(nil, map[string]string{kwv1.AnnotationHighErrorRateThreshold: "2%"})}}
	createWithReplicas(t, c, deploy, func() { deploy.Status.Replicas = 3 })
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kong-5d4f",
		Labels:          map[string]string{"app": "kong", kwv1.LabelInject: kwv1.LabelInjectValue, "pod-template-hash": "5d4f"},
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(deploy, appsv1.SchemeGroupVersion.WithKind("Deployment"))}},
		Spec: appsv1.ReplicaSetSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "kong", "pod-template-hash": "5d4f"}},
			Template: rollupTemplate(map[string]string{"pod-template-hash": "5d4f"}, nil)}}
	if err := c.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kong-dp"},
		Spec: appsv1.StatefulSetSpec{Selector: kong, Template: rollupTemplate(nil, nil)}}
	createWithReplicas(t, c, sts, func() { sts.Status.Replicas = 1 })

	// Pods with stats from real aggregators: 400 and 600 requests, 3% errors; a third pod's
	// annotation is malformed.
	var latencies []float64
	statsA := rollupStats(t, 400, 12, 1, &latencies)
	statsB := rollupStats(t, 600, 18, 7, &latencies)
	slices.Sort(latencies)
	rollupPod(t, c, rs, "kong-5d4f-a", statsA)
	rollupPod(t, c, rs, "kong-5d4f-b", statsB)
	rollupPod(t, c, rs, "kong-5d4f-c", `{"apiVersion":"kong-watcher.io/v1alpha1","kind":"Stats","total":{"requests":"many"}}`)
	rollupPod(t, c, sts, "kong-dp-0", rollupStats(t, 50, 0, 3, new([]float64)))

	patches, reads := startRollup(t, cfg, ns)

	// The Deployment's annotations are the merge of the two valid pods' stats.
	want := report.Annotations(mergeAnnotations(t, statsA, statsB), 0)
	want[kwv1.AnnotationPods] = "2 of 3 pods reporting"
	var got *appsv1.Deployment
	eventually(t, "the Deployment's stats annotations", func() (bool, error) {
		got = &appsv1.Deployment{}
		err := c.Get(ctx, client.ObjectKeyFromObject(deploy), got)
		return err == nil && got.Annotations[kwv1.AnnotationPods] != "", err
	})
	for _, k := range kwv1.ReportedAnnotations {
		if got.Annotations[k] != want[k] {
			t.Errorf("%s = %q, want %q", k, got.Annotations[k], want[k])
		}
	}
	s, err := aggregate.ParseStats(got.Annotations[kwv1.AnnotationStats])
	if err != nil {
		t.Fatal(err)
	}
	exact := latencies[int(math.Ceil(0.99*float64(len(latencies))))-1]
	if s.Total.Requests != 1000 || s.Total.Errors != 30 || math.Abs(s.Window.LatencyMs.P99-exact) > exact/32+0.05 {
		t.Errorf("requests %d errors %d p99 %v, want 1000, 30 and %v within half a bucket", s.Total.Requests, s.Total.Errors, s.Window.LatencyMs.P99, exact)
	}
	checkOnlyStatistics(t, got, deploy)

	eventually(t, "the StatefulSet's stats annotations", func() (bool, error) {
		got := &appsv1.StatefulSet{}
		err := c.Get(ctx, client.ObjectKeyFromObject(sts), got)
		ann := got.Annotations
		return err == nil && ann[kwv1.AnnotationPods] == "1 of 1 pods reporting" && strings.HasPrefix(ann[kwv1.AnnotationRequests], "total=50 errors=0 "), err
	})

	// HighErrorRate on the Deployment, with the template's threshold.
	eventually(t, "a HighErrorRate Event on the Deployment", func() (bool, error) {
		evs, err := cs.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		var seen []string
		for _, e := range evs.Items {
			seen = append(seen, e.Regarding.Kind+"/"+e.Regarding.Name+" "+e.Reason+": "+e.Note)
			if e.Regarding.Kind == "Deployment" && e.Regarding.UID == deploy.UID && e.Reason == kwv1.ReasonHighErrorRate &&
				e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "30 of 1000 requests failed") && strings.Contains(e.Note, "above the 2.0% threshold") {
				return true, nil
			}
		}
		return false, fmt.Errorf("events: %q", seen)
	})

	// Nothing changes: three more rounds read the Deployment, none patches it.
	before, rv, n := patches.Load(), got.ResourceVersion, reads.Load()
	eventually(t, "three more rollup rounds", func() (bool, error) { return reads.Load() >= n+3, nil })
	if after := patches.Load(); after != before {
		t.Errorf("%d patches of an unchanged Deployment", after-before)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(deploy), got); err != nil || got.ResourceVersion != rv {
		t.Errorf("the Deployment changed (resourceVersion %s -> %s, %v)", rv, got.ResourceVersion, err)
	}

	// A pod that goes away drops out.
	if err := c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kong-5d4f-b"}}, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deleted pod dropping out", func() (bool, error) {
		err := c.Get(ctx, client.ObjectKeyFromObject(deploy), got)
		return err == nil && got.Annotations[kwv1.AnnotationPods] == "1 of 3 pods reporting", err
	})
	if r := got.Annotations[kwv1.AnnotationRequests]; !strings.HasPrefix(r, "total=400 errors=12 ") {
		t.Errorf("requests after the pod left: %q", r)
	}
	checkOnlyStatistics(t, got, deploy)
}

// rollupTemplate is a labelled Kong pod template.
func rollupTemplate(labels, annotations map[string]string) corev1.PodTemplateSpec {
	l := map[string]string{"app": "kong", kwv1.LabelInject: kwv1.LabelInjectValue}
	for k, v := range labels {
		l[k] = v
	}
	return corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: l, Annotations: annotations},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}}}
}

// createWithReplicas creates a workload, then sets (with setStatus) and writes the status its
// controller would report.
func createWithReplicas(t *testing.T, c client.Client, w client.Object, setStatus func()) {
	t.Helper()
	if err := c.Create(t.Context(), w); err != nil {
		t.Fatal(err)
	}
	setStatus()
	if err := c.Status().Update(t.Context(), w); err != nil {
		t.Fatal(err)
	}
}

// rollupPod creates a pod of owner (its controller) with the stats annotation.
func rollupPod(t *testing.T, c client.Client, owner client.Object, name, stats string) {
	t.Helper()
	kind := "ReplicaSet"
	if _, ok := owner.(*appsv1.StatefulSet); ok {
		kind = "StatefulSet"
	}
	tmpl := rollupTemplate(nil, nil)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: owner.GetNamespace(), Name: name, Labels: tmpl.Labels,
		Annotations:     map[string]string{kwv1.AnnotationStats: stats},
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(owner, appsv1.SchemeGroupVersion.WithKind(kind))}},
		Spec: tmpl.Spec}
	if err := c.Create(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
}

// rollupStats is the Stats JSON of an agent that saw n requests (errs of them 502s) in a
// 5-minute window that just ended, with latencies spread around base ms; the latencies are
// appended to all.
func rollupStats(t *testing.T, n, errs, base int, all *[]float64) string {
	t.Helper()
	end := time.Now()
	clock := end.Add(-5 * time.Minute)
	a := aggregate.New(aggregate.Options{Now: func() time.Time { return clock }})
	for i := 0; i < n; i++ {
		lat := time.Duration(base*1000+(i*7919)%(40*base*1000)) * time.Microsecond
		status := 200
		if i < errs {
			status = 502
		}
		a.Observe(&model.Request{Method: "GET", Host: "api.example.com", URI: fmt.Sprintf("/orders/%d", i), Status: status,
			Latency: lat, HasUpstream: true, Upstream: lat / 2, End: clock})
		*all = append(*all, float64(lat/time.Microsecond)/1000)
	}
	clock = end
	a.Rotate()
	b, err := json.Marshal(a.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mergeAnnotations is the merge of the stats annotations, as the rollup computes it.
func mergeAnnotations(t *testing.T, stats ...string) kwv1.Stats {
	t.Helper()
	docs := make([]kwv1.Stats, len(stats))
	for i, s := range stats {
		var err error
		if docs[i], err = aggregate.ParseStats(s); err != nil {
			t.Fatal(err)
		}
	}
	return aggregate.Merge(docs, aggregate.MergeOptions{})
}

// startRollup runs the rollup as the manager does (a Runnable needing leader election, the
// manager's Event recorder), limited to ns, every 200 ms. It counts the rollup's PATCH and GET
// requests on Deployments.
func startRollup(t *testing.T, cfg *rest.Config, ns string) (patches, reads *atomic.Int64) {
	t.Helper()
	patches, reads = new(atomic.Int64), new(atomic.Int64)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: app.Scheme(), Logger: logf.Log.WithName("rollup"),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0"})
	if err != nil {
		t.Fatal(err)
	}
	rcfg := rest.CopyConfig(cfg)
	rcfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			if strings.Contains(req.URL.Path, "/deployments/") {
				switch req.Method {
				case http.MethodPatch:
					patches.Add(1)
				case http.MethodGet:
					reads.Add(1)
				}
			}
			return rt.RoundTrip(req)
		})
	})
	r, err := rollup.New(rcfg, mgr.GetEventRecorder("kong-watcher-manager"), rollup.Options{
		Interval: 200 * time.Millisecond, Namespace: ns, Log: logf.Log.WithName("rollup")})
	if err != nil {
		t.Fatal(err)
	}
	if !r.NeedLeaderElection() {
		t.Error("the rollup must run on the leader only")
	}
	if err := mgr.Add(r); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the manager did not stop within 30s")
		}
	})
	return patches, reads
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// checkOnlyStatistics fails unless the rollup's field manager owns nothing but statistics
// annotations on d and d's spec, labels and other annotations are as created. (Its generation
// does move: the API server bumps a Deployment's generation on any annotation change, because
// the Deployment controller copies annotations to the ReplicaSet.)
func checkOnlyStatistics(t *testing.T, d, created *appsv1.Deployment) {
	t.Helper()
	if !apiequality.Semantic.DeepEqual(d.Spec, created.Spec) || !maps.Equal(d.Labels, created.Labels) {
		t.Errorf("the Deployment's spec or labels changed: %+v %q", d.Spec, d.Labels)
	}
	for k, v := range created.Annotations {
		if d.Annotations[k] != v {
			t.Errorf("annotation %s = %q, was %q", k, d.Annotations[k], v)
		}
	}
	for _, m := range d.ManagedFields {
		if m.Manager != rollup.FieldManager {
			continue
		}
		var fields struct {
			Metadata struct {
				Annotations map[string]json.RawMessage `json:"f:annotations"`
			} `json:"f:metadata"`
		}
		raw := m.FieldsV1.Raw
		if err := json.Unmarshal(raw, &fields); err != nil {
			t.Fatal(err)
		}
		var all map[string]json.RawMessage
		_ = json.Unmarshal(raw, &all)
		if len(all) != 1 || len(fields.Metadata.Annotations) == 0 {
			t.Errorf("%s owns %s", rollup.FieldManager, raw)
		}
		for k := range fields.Metadata.Annotations {
			if k == "." {
				continue
			}
			if !slices.Contains(kwv1.ReportedAnnotations, strings.TrimPrefix(k, "f:")) {
				t.Errorf("%s owns the annotation %s", rollup.FieldManager, k)
			}
		}
	}
}
