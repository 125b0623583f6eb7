package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/events"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// TestWriteErrors: how the API server's answers to the pod patch map to the agent's status.
// The envtest suite (test/envtest/reporter) shows the real API server's answers.
func TestWriteErrors(t *testing.T) {
	podGR := schema.GroupResource{Resource: "pods"}
	for _, tc := range []struct {
		name   string
		err    error
		status int
	}{
		{"written", nil, http.StatusOK},
		{"pod gone", apierrors.NewNotFound(podGR, "kong-0"), http.StatusGone},
		{"conflict", apierrors.NewConflict(podGR, "kong-0", errors.New("uid mismatch")), http.StatusGone},
		// What kube-apiserver answers a merge patch carrying the old pod's uid on a new pod of
		// the same name.
		{"new pod of the same name", apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, "kong-0", field.ErrorList{
			field.Invalid(field.NewPath("metadata", "uid"), "uid-0", "field is immutable")}), http.StatusGone},
		{"another invalid field", apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, "kong-0", field.ErrorList{
			field.Invalid(field.NewPath("metadata", "annotations"), "x", "too long")}), http.StatusServiceUnavailable},
		{"API server unavailable", apierrors.NewServiceUnavailable("etcd"), http.StatusServiceUnavailable},
		{"denied by a policy", apierrors.NewForbidden(podGR, "kong-0", errors.New("ValidatingAdmissionPolicy")), http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kong", Name: "kong-0", UID: "uid-0",
				Annotations: map[string]string{v1alpha1.AnnotationHighErrorRateThreshold: "10%", "user/note": "x"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy"}, {Name: v1alpha1.AgentContainerName}}}})
			cs.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if tc.err != nil {
					return true, nil, tc.err
				}
				return false, nil, nil
			})
			reviews := &fakeReviews{answer: reviewOf("system:serviceaccount:kong:kong", map[string]authnv1.ExtraValue{
				extraPodName: {"kong-0"}, extraPodUID: {"uid-0"}}, v1alpha1.ReportAudience)}
			auth := NewAuthenticator(reviews, DefaultAuthOptions(v1alpha1.ReportAudience))
			auth.now = func() time.Time { return testNow }
			h := NewHandler(Options{Auth: auth, Client: cs})
			token := signed(t, jose.ES256, testKey, podToken(nil))
			body, _ := json.Marshal(v1alpha1.Report{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.ReportKind,
				Pod:   v1alpha1.PodRef{Namespace: "kong", Name: "kong-0"},
				Stats: &v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind}})
			post := func() *httptest.ResponseRecorder {
				req := httptest.NewRequest(http.MethodPost, v1alpha1.ReportPath, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer  "+token) // (two spaces: a lenient client)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				return rec
			}
			rec := post()
			if rec.Code != tc.status {
				t.Fatalf("status %d %q, want %d", rec.Code, rec.Body, tc.status)
			}
			if tc.status == http.StatusOK {
				var resp v1alpha1.ReportResponse
				if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil || len(resp.Annotations) != 1 ||
					resp.Annotations[v1alpha1.AnnotationHighErrorRateThreshold] != "10%" {
					t.Errorf("response %s (%v), want the threshold annotation only", rec.Body, err)
				}
			}
			// A 410 drops the token from the cache: the next report is reviewed again.
			post()
			if want := map[bool]int32{true: 2, false: 1}[tc.status == http.StatusGone]; reviews.n.Load() != want {
				t.Errorf("%d TokenReviews for two reports, want %d", reviews.n.Load(), want)
			}
		})
	}
}

// agentTestPod is a pod as the webhook leaves it: the injected annotation and the agent
// container, which carries the stats interval the pod's reports are paced by.
func agentTestPod(name string, uid types.UID, interval string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kong", Name: name, UID: uid,
		Annotations: map[string]string{v1alpha1.AnnotationInjected: "v0.1.0"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy"}, {Name: v1alpha1.AgentContainerName,
			Env: []corev1.EnvVar{{Name: v1alpha1.EnvStatsInterval, Value: interval}}}}}}
}

// reportTest is a handler whose TokenReviews bind each token to the pod the token names (its
// uid being "uid-" + the pod's name), over a fake clientset counting pod gets and patches.
type reportTest struct {
	h             *Handler
	cs            *fake.Clientset
	reviews       *fakeReviews
	rec           *events.FakeRecorder
	tokens        map[string]string // pod name -> token
	gets, patches int
	getErr        error
	now           time.Time
}

func newReportTest(t *testing.T, o Options, pods ...runtime.Object) *reportTest {
	rt := &reportTest{cs: fake.NewClientset(pods...), tokens: map[string]string{}, now: testNow,
		rec: events.NewFakeRecorder(100)}
	rt.cs.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		rt.gets++
		return rt.getErr != nil, nil, rt.getErr
	})
	rt.cs.PrependReactor("patch", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		rt.patches++
		return false, nil, nil
	})
	pod := map[string]string{}
	rt.reviews = &fakeReviews{answer: func(tr *authnv1.TokenReview) (*authnv1.TokenReview, error) {
		name := pod[tr.Spec.Token]
		return reviewOf("system:serviceaccount:kong:kong", map[string]authnv1.ExtraValue{
			extraPodName: {name}, extraPodUID: {"uid-" + name}}, v1alpha1.ReportAudience)(tr)
	}}
	for _, name := range []string{"kong-0", "kong-1", "other"} {
		tok := signed(t, jose.ES256, testKey, podToken(func(c *tokenClaims) { c.Kubernetes.Pod.Name = name }))
		rt.tokens[name], pod[tok] = tok, name
	}
	o.Auth = NewAuthenticator(rt.reviews, DefaultAuthOptions(v1alpha1.ReportAudience))
	o.Auth.now = func() time.Time { return testNow }
	o.Client, o.Recorder = rt.cs, rt.rec
	rt.h = NewHandler(o)
	rt.h.now = func() time.Time { return rt.now }
	return rt
}

// post sends pod's agent's report: stats and a TrafficStats Event.
func (rt *reportTest) post(pod string) *httptest.ResponseRecorder {
	body, _ := json.Marshal(v1alpha1.Report{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.ReportKind,
		Pod:    v1alpha1.PodRef{Namespace: "kong", Name: pod},
		Stats:  &v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind},
		Events: []v1alpha1.ReportEvent{{Type: corev1.EventTypeNormal, Reason: v1alpha1.ReasonTrafficStats, Message: "n"}}})
	req := httptest.NewRequest(http.MethodPost, v1alpha1.ReportPath, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+rt.tokens[pod])
	rec := httptest.NewRecorder()
	rt.h.ServeHTTP(rec, req)
	return rec
}

// TestOnlyAgentPodsReport: any pod can get a token for the report audience, so a verified
// token is not enough: its pod must be one the webhook injected (its annotation, or the agent
// as a container or native sidecar). The pod is read once per token; the verdict is cached
// with the identity, unless the API server could not answer.
func TestOnlyAgentPodsReport(t *testing.T) {
	annotated := agentTestPod("kong-0", "uid-kong-0", "30s")
	annotated.Spec.Containers = annotated.Spec.Containers[:1] // the webhook's annotation alone
	native := agentTestPod("kong-1", "uid-kong-1", "30s")     // the agent as a native sidecar alone
	native.Annotations = nil
	native.Spec.InitContainers, native.Spec.Containers = native.Spec.Containers[1:], native.Spec.Containers[:1]
	// Labelled for injection, even, but created without the agent (the webhook was down).
	other := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kong", Name: "other", UID: "uid-other",
		Labels: map[string]string{v1alpha1.LabelInject: v1alpha1.LabelInjectValue}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "busybox"}}}}
	rt := newReportTest(t, Options{}, annotated, native, other)

	for _, pod := range []string{"kong-0", "kong-1"} {
		for range 2 {
			if rec := rt.post(pod); rec.Code != http.StatusOK {
				t.Fatalf("injected pod %s: %d %s", pod, rec.Code, rec.Body)
			}
		}
	}
	if rt.gets != 2 || rt.patches != 4 || len(rt.rec.Events) != 4 {
		t.Errorf("%d gets, %d patches, %d Events for 2 reports each of 2 agent pods, want 2, 4, 4", rt.gets, rt.patches, len(rt.rec.Events))
	}

	gets, patches, reviews := rt.gets, rt.patches, rt.reviews.n.Load()
	for range 3 {
		rec := rt.post("other")
		if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "not a kong-watcher agent pod") {
			t.Fatalf("pod without the agent: %d %q, want 403 saying why", rec.Code, rec.Body)
		}
	}
	if rt.patches != patches || len(rt.rec.Events) != 4 {
		t.Errorf("the pod without the agent was written: %d patches, %d Events", rt.patches-patches, len(rt.rec.Events)-4)
	}
	if rt.gets-gets != 1 || rt.reviews.n.Load()-reviews != 1 {
		t.Errorf("%d gets and %d TokenReviews for 3 reports of one token, want 1 each (cached)", rt.gets-gets, rt.reviews.n.Load()-reviews)
	}
}

// TestAgentPodCheckErrors: a pod the API server cannot show now is answered 503 and asked
// again on the next report (the agent retries); one deleted since the TokenReview, 410.
func TestAgentPodCheckErrors(t *testing.T) {
	t.Run("API server unavailable", func(t *testing.T) {
		rt := newReportTest(t, Options{}, agentTestPod("kong-0", "uid-kong-0", "30s"))
		rt.getErr = apierrors.NewServiceUnavailable("etcd")
		for range 2 {
			if rec := rt.post("kong-0"); rec.Code != http.StatusServiceUnavailable {
				t.Fatalf("%d %q, want 503", rec.Code, rec.Body)
			}
		}
		rt.getErr = nil
		if rec := rt.post("kong-0"); rec.Code != http.StatusOK {
			t.Fatalf("API server back: %d %q", rec.Code, rec.Body)
		}
		if rt.gets != 3 || rt.reviews.n.Load() != 3 || rt.patches != 1 {
			t.Errorf("%d gets, %d TokenReviews, %d patches, want 3, 3 (nothing cached while failing), 1", rt.gets, rt.reviews.n.Load(), rt.patches)
		}
	})
	t.Run("pod replaced", func(t *testing.T) {
		rt := newReportTest(t, Options{}, agentTestPod("kong-0", "uid-of-a-new-pod", "30s"))
		if rec := rt.post("kong-0"); rec.Code != http.StatusGone || rt.patches != 0 {
			t.Fatalf("%d %q with %d patches, want 410 and none", rec.Code, rec.Body, rt.patches)
		}
	})
}

// TestPodReportRateLimit: each report is a pod PATCH on the manager's API budget, so a pod is
// held to a burst, then one report per half stats interval (its agent's); beyond that it is
// answered 429 with Retry-After, and nothing is written. Other pods are not affected.
func TestPodReportRateLimit(t *testing.T) {
	rt := newReportTest(t, Options{PodReportBurst: 3},
		agentTestPod("kong-0", "uid-kong-0", ""), agentTestPod("kong-1", "uid-kong-1", "4s"))
	var codes []int
	for range 6 {
		codes = append(codes, rt.post("kong-0").Code)
	}
	if want := []int{200, 200, 200, 429, 429, 429}; !slices.Equal(codes, want) {
		t.Fatalf("statuses %v, want %v", codes, want)
	}
	if rt.patches != 3 || len(rt.rec.Events) != 3 {
		t.Errorf("%d patches, %d Events, want 3 (the refused reports write nothing)", rt.patches, len(rt.rec.Events))
	}
	// The default interval (30s): one report every 15s.
	rec := rt.post("kong-0")
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "15" {
		t.Errorf("%d Retry-After %q, want 429 and 15", rec.Code, rec.Header().Get("Retry-After"))
	}
	rt.now = rt.now.Add(15 * time.Second)
	if c1, c2 := rt.post("kong-0").Code, rt.post("kong-0").Code; c1 != 200 || c2 != 429 {
		t.Errorf("15s later: %d then %d, want 200 then 429", c1, c2)
	}

	// Another pod has its own bucket, paced by its own interval (4s: one report every 2s).
	for i := range 3 {
		if rec := rt.post("kong-1"); rec.Code != http.StatusOK {
			t.Fatalf("another pod's report %d: %d %q", i, rec.Code, rec.Body)
		}
	}
	if rec := rt.post("kong-1"); rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "2" {
		t.Errorf("%d Retry-After %q, want 429 and 2", rec.Code, rec.Header().Get("Retry-After"))
	}
}

// TestReportInterval: the pace comes from the agent's STATS_INTERVAL as the webhook sets it,
// else the pod's annotation; values the agent would refuse count as the default.
func TestReportInterval(t *testing.T) {
	for _, tc := range []struct {
		env, annotation string
		want            time.Duration
	}{
		{"", "", 30 * time.Second},
		{"5s", "", 5 * time.Second},
		{"", "10s", 10 * time.Second},
		{"5s", "10s", 5 * time.Second},
		{"500ms", "", 30 * time.Second},
		{"2h", "", 30 * time.Second},
		{"soon", "", 30 * time.Second},
	} {
		p := agentTestPod("kong-0", "u", tc.env)
		if tc.env == "" {
			p.Spec.Containers[1].Env = nil
		}
		if tc.annotation != "" {
			p.Annotations[v1alpha1.AnnotationStatsInterval] = tc.annotation
		}
		if got := reportInterval(p); got != tc.want {
			t.Errorf("env %q annotation %q: %v, want %v", tc.env, tc.annotation, got, tc.want)
		}
	}
	// An agent with a long interval is never held to less than the default's pace.
	if got := reportPeriod(Identity{ReportInterval: time.Hour}); got != 15*time.Second {
		t.Errorf("period for a 1h interval: %v, want 15s", got)
	}
}

// TestPodLimitersBounded: the limiters of at most MaxTrackedPods pods are kept.
func TestPodLimitersBounded(t *testing.T) {
	rt := newReportTest(t, Options{MaxTrackedPods: 2})
	for i := range 5 {
		rt.h.allow(Identity{PodUID: types.UID(fmt.Sprint("uid-", i))})
	}
	if n := rt.h.limiters.len(); n != 2 {
		t.Errorf("%d limiters kept, want 2", n)
	}
}
