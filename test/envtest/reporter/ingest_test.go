package reporter

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
)

// refusedNote marks the Events of reports that must be refused: none may ever be recorded.
// They are HighErrorRate Events, a reason no accepted report here carries, so that a refused
// Event can never hide among accepted ones of its reason.
const refusedNote = "must-not-be-recorded"

// TestReportEndpointRefusesBadInput sends the real report endpoint (the real Handler and
// Authenticator, TokenReviews against the real API server, writes with the manager's real
// identity) what a confused or hostile client might: tokens for another audience, bound to
// nothing, bound to another or a deleted pod, forged; oversized, malformed and out-of-contract
// bodies; a flood. Every refusal has its status, writes nothing (the pods' resourceVersions do
// not move) and records none of its Events; the cheap refusals cost no TokenReview.
func TestReportEndpointRefusesBadInput(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	const ns = "kw-ingest"
	if _, err := c.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "kong"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	newPod := func(name string) *corev1.Pod {
		t.Helper()
		p, err := c.admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "kong"},
				Annotations: map[string]string{"user/note": "keep"}},
			Spec: corev1.PodSpec{ServiceAccountName: "kong", Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}, {Name: v1alpha1.AgentContainerName, Image: "agent"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	deletePod := func(p *corev1.Pod) {
		t.Helper()
		// No kubelet: a pod on no node goes at once.
		if err := c.admin.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "pod "+p.Name+" gone", func() bool {
			_, err := c.admin.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
			return err != nil
		})
	}
	podA, podB := newPod("kong-a"), newPod("kong-b")

	m := startManager(t, c, "127.0.0.1:0", func(o *ingest.Options) { o.MaxInFlight = 4; o.PodReportBurst = 1 << 20 })
	tokA := agentToken(t, c, podA)

	report := func(pod string, requests uint64, note string, mod func(*v1alpha1.Report)) []byte {
		s := v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind, DataPath: "nginx-request",
			Since: time.Now().Add(-time.Hour).UTC().Truncate(time.Second), Updated: time.Now().UTC(),
			Total: v1alpha1.Summary{ListenerSummary: v1alpha1.ListenerSummary{Requests: requests, Responses: requests, StatusClasses: map[string]uint64{"2xx": requests}}}}
		ev := v1alpha1.ReportEvent{Type: corev1.EventTypeNormal, Reason: v1alpha1.ReasonTrafficStats, Message: note}
		if note == refusedNote {
			ev = v1alpha1.ReportEvent{Type: corev1.EventTypeWarning, Reason: v1alpha1.ReasonHighErrorRate, Message: note}
		}
		r := v1alpha1.Report{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.ReportKind,
			Pod: v1alpha1.PodRef{Namespace: ns, Name: pod}, Stats: &s, Events: []v1alpha1.ReportEvent{ev}}
		if mod != nil {
			mod(&r)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	reviews := func() int64 { return m.Reviews.n.Load() }

	if st, msg := m.post(t, tokA, report(podA.Name, 100, "accepted", nil)); st != http.StatusOK {
		t.Fatalf("a valid report: %d %s", st, msg)
	}
	if n := reviews(); n != 1 {
		t.Errorf("%d TokenReviews for the first report, want 1", n)
	}

	// The pods' resourceVersions: a refused report writes nothing.
	versions := func(pods ...string) map[string]string {
		out := map[string]string{}
		for _, name := range pods {
			p, err := c.admin.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			out[name] = p.ResourceVersion + " " + fmt.Sprint(p.Annotations)
		}
		return out
	}
	expect := func(name string, gotStatus int, msg string, wantStatus int, before map[string]string, pods []string, reviewsBefore, wantNewReviews int64) {
		t.Helper()
		if gotStatus != wantStatus {
			t.Errorf("%s: %d %q, want %d", name, gotStatus, msg, wantStatus)
		} else {
			t.Logf("%s: %d %s", name, gotStatus, msg)
		}
		if after := versions(pods...); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("%s: the refused report wrote:\nbefore %v\nafter  %v", name, before, after)
		}
		if wantNewReviews >= 0 {
			if n := reviews() - reviewsBefore; n != wantNewReviews {
				t.Errorf("%s: %d TokenReviews, want %d", name, n, wantNewReviews)
			}
		}
	}

	tokenFor := func(pod *corev1.Pod, audiences []string) string {
		t.Helper()
		tok, err := requestToken(ctx, c.admin, ns, "kong", pod, audiences)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// Pod B's claims with pod A's signature: well-formed, so only the TokenReview can tell.
	tokB := agentToken(t, c, podB)
	forged := tokB[:strings.LastIndex(tokB, ".")] + tokA[strings.LastIndex(tokA, "."):]

	events51 := make([]v1alpha1.ReportEvent, v1alpha1.MaxReportEvents+1)
	for i := range events51 {
		events51[i] = v1alpha1.ReportEvent{Type: corev1.EventTypeWarning, Reason: v1alpha1.ReasonHighErrorRate, Message: refusedNote}
	}
	big := report(podA.Name, 1, refusedNote, nil)
	big = append(big[:len(big)-1], []byte(`,"padding":"`+strings.Repeat("x", v1alpha1.MaxReportBytes)+`"}`)...)

	for _, tc := range []struct {
		name        string
		token       string
		body        []byte
		method      string
		contentType string
		want        int
		reviews     int64
	}{
		{name: "no Authorization header", body: report(podA.Name, 1, refusedNote, nil), want: 401},
		{name: "garbage bearer", token: "garbage", body: report(podA.Name, 1, refusedNote, nil), want: 401},
		{name: "JWT-shaped garbage", token: "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln", body: report(podA.Name, 1, refusedNote, nil), want: 401},
		{name: "token for the API server's default audience", token: tokenFor(podA, nil), body: report(podA.Name, 1, refusedNote, nil), want: 401},
		{name: "token for https://kubernetes.default.svc", token: tokenFor(podA, []string{"https://kubernetes.default.svc"}), body: report(podA.Name, 1, refusedNote, nil), want: 401},
		{name: "unbound token for our audience (kubectl create token --audience)", token: tokenFor(nil, []string{v1alpha1.ReportAudience}), body: report(podA.Name, 1, refusedNote, nil), want: 401},
		{name: "forged signature", token: forged, body: report(podB.Name, 1, refusedNote, nil), want: 401, reviews: 1},
		{name: "forged signature again (refusal cached)", token: forged, body: report(podB.Name, 1, refusedNote, nil), want: 401},
		{name: "pod A's token, report for pod B", token: tokA, body: report(podB.Name, 1, refusedNote, nil), want: 403},
		{name: "pod A's token, report for pod A in another namespace", token: tokA, body: report(podA.Name, 1, refusedNote, func(r *v1alpha1.Report) { r.Pod.Namespace = "default" }), want: 403},
		{name: "body over MaxReportBytes", token: tokA, body: big, want: 413},
		{name: "malformed JSON", token: tokA, body: []byte(`{"apiVersion":"kong-watcher.io/v1alpha1","kind":`), want: 400},
		{name: "unknown field", token: tokA, body: []byte(`{"spec":{"replicas":0},` + string(report(podA.Name, 1, refusedNote, nil)[1:])), want: 400},
		{name: "wrong kind", token: tokA, body: report(podA.Name, 1, refusedNote, func(r *v1alpha1.Report) { r.Kind = "Stats" }), want: 400},
		{name: "more than MaxReportEvents events", token: tokA, body: report(podA.Name, 1, refusedNote, func(r *v1alpha1.Report) { r.Events = events51 }), want: 400},
		{name: "reason outside AgentEventReasons", token: tokA, body: report(podA.Name, 1, refusedNote, func(r *v1alpha1.Report) { r.Events[0].Reason = v1alpha1.ReasonInjected }), want: 400},
		{name: "event type Error", token: tokA, body: report(podA.Name, 1, refusedNote, func(r *v1alpha1.Report) { r.Events[0].Type = "Error" }), want: 400},
		{name: "negative latency", token: tokA, body: report(podA.Name, 1, refusedNote, func(r *v1alpha1.Report) { r.Stats.Window.LatencyMs.P99 = -1 }), want: 400},
		{name: "data after the object", token: tokA, body: append(report(podA.Name, 1, refusedNote, nil), []byte(` {"kind":"Report"}`)...), want: 400},
		{name: "not JSON content", token: tokA, body: report(podA.Name, 1, refusedNote, nil), contentType: "text/plain", want: 415},
		{name: "GET", token: tokA, method: http.MethodGet, want: 405},
	} {
		before, rv := versions(podA.Name, podB.Name), reviews()
		req, err := http.NewRequestWithContext(ctx, cmp.Or(tc.method, http.MethodPost), m.URL, bytes.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", cmp.Or(tc.contentType, "application/json"))
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		st, msg := do(t, m.srv.Client(), req)
		expect(tc.name, st, msg, tc.want, before, []string{podA.Name, podB.Name}, rv, tc.reviews)
	}

	// A deleted pod's token, never used: the API server refuses it (the bound pod is gone).
	podC := newPod("kong-c")
	tokC := agentToken(t, c, podC)
	deletePod(podC)
	before, rv := versions(podA.Name, podB.Name), reviews()
	st, msg := m.post(t, tokC, report(podC.Name, 1, refusedNote, nil))
	expect("deleted pod's token", st, msg, 401, before, []string{podA.Name, podB.Name}, rv, 1)

	// A deleted pod's token the manager has verified before: the write finds no pod (410); the
	// token is then forgotten and the next try reviewed again. (The API server's own token cache
	// may still vouch for it for 10 s, and the write then finds no pod again: 410 or 401.)
	podD := newPod("kong-d")
	tokD := agentToken(t, c, podD)
	if st, msg := m.post(t, tokD, report(podD.Name, 5, "accepted", nil)); st != http.StatusOK {
		t.Fatalf("pod D's first report: %d %s", st, msg)
	}
	deletePod(podD)
	before, rv = versions(podA.Name, podB.Name), reviews()
	st, msg = m.post(t, tokD, report(podD.Name, 6, refusedNote, nil))
	expect("deleted pod's cached token", st, msg, 410, before, []string{podA.Name, podB.Name}, rv, 0)
	st, msg = m.post(t, tokD, report(podD.Name, 6, refusedNote, nil))
	want := http.StatusUnauthorized
	if st == http.StatusGone {
		want = st
	}
	expect("deleted pod's token after the 410", st, msg, want, before, []string{podA.Name, podB.Name}, rv, 1)

	// A pod deleted and created again under the same name (a StatefulSet's): the old pod's
	// cached tokens must not write the new pod, neither its statistics (the patch's uid
	// precondition) nor its Events (the read's uid check).
	podE := newPod("kong-e")
	tokE1, tokE2 := agentToken(t, c, podE), agentToken(t, c, podE)
	for _, tok := range []string{tokE1, tokE2} {
		if st, msg := m.post(t, tok, report(podE.Name, 7, "accepted", nil)); st != http.StatusOK {
			t.Fatalf("pod E's first reports: %d %s", st, msg)
		}
	}
	deletePod(podE)
	podE2 := newPod("kong-e")
	before, rv = versions(podA.Name, podB.Name, podE2.Name), reviews()
	st, msg = m.post(t, tokE1, report(podE.Name, 8, refusedNote, nil))
	expect("old pod's cached token, stats for the new pod of its name", st, msg, 410, before, []string{podA.Name, podB.Name, podE2.Name}, rv, 0)
	st, msg = m.post(t, tokE2, report(podE.Name, 8, refusedNote, func(r *v1alpha1.Report) { r.Stats = nil }))
	expect("old pod's cached token, Events only for the new pod of its name", st, msg, 410, before, []string{podA.Name, podB.Name, podE2.Name}, rv, 0)

	// A flood: far more reports at once than MaxInFlight (4). The excess is turned away with
	// 429 at once, nothing fails, and the endpoint serves normally afterwards.
	flood := func(token string) map[int]int {
		var mu sync.Mutex
		got := map[int]int{}
		var wg sync.WaitGroup
		body := report(podA.Name, 100, "flood", func(r *v1alpha1.Report) { r.Events = nil })
		start := make(chan struct{})
		for range 200 {
			wg.Go(func() {
				<-start
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, m.URL, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer "+token)
				code := -1
				if resp, err := m.srv.Client().Do(req); err == nil {
					code = resp.StatusCode
					resp.Body.Close()
				}
				mu.Lock()
				got[code]++
				mu.Unlock()
			})
		}
		close(start)
		wg.Wait()
		return got
	}
	rv = reviews()
	got := flood(tokA)
	t.Logf("200 concurrent valid reports, MaxInFlight 4: statuses %v", got)
	if got[http.StatusTooManyRequests] == 0 || got[http.StatusOK] == 0 || got[http.StatusOK]+got[http.StatusTooManyRequests] != 200 {
		t.Errorf("flood of valid reports: statuses %v, want only 200 and 429, some of each", got)
	}
	got = flood("garbage")
	t.Logf("200 concurrent garbage tokens: statuses %v", got)
	if got[http.StatusUnauthorized]+got[http.StatusTooManyRequests] != 200 {
		t.Errorf("flood of garbage tokens: statuses %v, want only 401 and 429", got)
	}
	if n := reviews() - rv; n != 0 {
		t.Errorf("the floods cost %d TokenReviews, want none", n)
	}
	if st, msg := m.post(t, tokA, report(podA.Name, 200, "after the flood", func(r *v1alpha1.Report) {
		r.Events[0].Reason = v1alpha1.ReasonProbesAttached
	})); st != http.StatusOK {
		t.Errorf("a valid report after the flood: %d %s", st, msg)
	}
	for code := 500; code < 600; code++ {
		if n := m.Statuses.get(code); n > 0 {
			t.Errorf("the manager answered %d %d times (all statuses: %v)", code, n, m.Statuses)
		}
	}
	p, err := c.admin.CoreV1().Pods(ns).Get(ctx, podA.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(p.Annotations[v1alpha1.AnnotationRequests], "total=200 ") || p.Annotations["user/note"] != "keep" {
		t.Errorf("pod A after the valid report: %v", p.Annotations)
	}

	// The accepted reports' Events are recorded; the refused ones' never are.
	eventually(t, 30*time.Second, "the Event of the report after the flood", func() bool {
		evs, err := c.admin.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.Note == "after the flood" && e.Regarding.UID == podA.UID && e.ReportingController == v1alpha1.AgentContainerName {
				return true
			}
		}
		return false
	})
	evs, err := c.admin.EventsV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.Note == refusedNote || e.Reason == v1alpha1.ReasonHighErrorRate || e.Regarding.Name == podB.Name || e.Regarding.UID == podE2.UID {
			t.Errorf("Event %s (%s on %s %s) recorded from a refused report", e.Name, e.Reason, e.Regarding.Name, e.Regarding.UID)
		}
	}
	t.Logf("statuses answered: %v; TokenReviews: %d", m.Statuses, reviews())
}
