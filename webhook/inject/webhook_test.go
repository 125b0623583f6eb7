package inject

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

func TestServeHTTPInjects(t *testing.T) {
	fake := events.NewFakeRecorder(4)
	w := NewWebhook(testConfig(), fake, testr.New(t))
	resp := admissionResponse(t, post(w, reviewBody(t, "abc-123", admissionv1.Create, "kong", podJSON(t, "invalid-overrides"))), "abc-123")
	if resp.PatchType == nil || len(resp.Patch) == 0 {
		t.Fatal("no JSON patch")
	}
	var ops []map[string]any
	if err := json.Unmarshal(resp.Patch, &ops); err != nil || len(ops) == 0 {
		t.Fatalf("patch is not a JSON patch array: %v %s", err, resp.Patch)
	}
	if len(resp.Warnings) != 5 {
		t.Errorf("warnings %q, want 5", resp.Warnings)
	}
	flushEvents(t, w)
	select {
	case e := <-fake.Events:
		want := "Normal Injected injected kong-watcher agent v1.2.3 as a native sidecar into pod kong-5c4b-*"
		if e != want {
			t.Errorf("event %q, want %q", e, want)
		}
	default:
		t.Error("no event recorded")
	}
}

func TestServeHTTPLeavesOtherRequestsAlone(t *testing.T) {
	pod := podJSON(t, "kong")
	for _, tc := range []struct {
		name string
		mut  func(*admissionv1.AdmissionRequest)
	}{
		{"update", func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Update; r.OldObject.Raw = pod }},
		{"delete", func(r *admissionv1.AdmissionRequest) {
			r.Operation = admissionv1.Delete
			r.OldObject.Raw, r.Object.Raw = pod, nil
		}},
		{"connect", func(r *admissionv1.AdmissionRequest) { r.Operation = admissionv1.Connect }},
		{"other kind", func(r *admissionv1.AdmissionRequest) {
			r.Kind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
			r.Object.Raw = []byte(`{"not":"a pod"}`)
		}},
		{"subresource", func(r *admissionv1.AdmissionRequest) {
			r.SubResource = "ephemeralcontainers"
		}},
		{"dry run still gets the patch", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var review admissionv1.AdmissionReview
			if err := json.Unmarshal(reviewBody(t, "u1", admissionv1.Create, "kong", pod), &review); err != nil {
				t.Fatal(err)
			}
			dry := tc.mut == nil
			if dry {
				yes := true
				review.Request.DryRun = &yes
			} else {
				tc.mut(review.Request)
			}
			body, _ := json.Marshal(review)
			rec := &captureRecorder{}
			w := NewWebhook(testConfig(), rec, testr.New(t))
			resp := admissionResponse(t, post(w, body), "u1")
			if dry != (len(resp.Patch) > 0) {
				t.Errorf("patch %s, want one only for the dry-run CREATE", resp.Patch)
			}
			flushEvents(t, w)
			if events := rec.recorded(); len(events) != 0 {
				t.Errorf("events recorded: %+v", events)
			}
		})
	}
}

func TestServeHTTPRejectsMalformedReviews(t *testing.T) {
	good := reviewBody(t, "u1", admissionv1.Create, "kong", podJSON(t, "kong"))
	withRequest := func(mut func(map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		mut(m)
		b, _ := json.Marshal(m)
		return b
	}
	req := func(m map[string]any) map[string]any { return m["request"].(map[string]any) }

	for _, tc := range []struct {
		name        string
		method      string
		contentType string
		body        []byte
		code        int
		want        string
	}{
		{"GET", http.MethodGet, "application/json", good, http.StatusMethodNotAllowed, "POST"},
		{"no content type", "", "-", good, 400, "Content-Type must be application/json"},
		{"wrong content type", "", "text/plain", good, 400, `got "text/plain"`},
		{"empty body", "", "", nil, 400, "empty body"},
		{"whitespace body", "", "", []byte(" \n"), 400, "empty body"},
		{"not JSON", "", "", []byte("hello"), 400, "not a JSON AdmissionReview"},
		{"JSON array", "", "", []byte("[]"), 400, "not a JSON AdmissionReview"},
		{"trailing garbage", "", "", append(append([]byte{}, good...), '}'), 400, "not a JSON AdmissionReview"},
		{"v1beta1", "", "", withRequest(func(m map[string]any) { m["apiVersion"] = "admission.k8s.io/v1beta1" }), 400, "admissionReviewVersions"},
		{"no kind", "", "", withRequest(func(m map[string]any) { delete(m, "kind") }), 400, `kind ""`},
		{"missing request", "", "", withRequest(func(m map[string]any) { delete(m, "request") }), 400, "has no request"},
		{"missing uid", "", "", withRequest(func(m map[string]any) { delete(req(m), "uid") }), 400, "no uid"},
		{"missing object", "", "", withRequest(func(m map[string]any) { delete(req(m), "object") }), 400, "no object"},
		{"null object", "", "", withRequest(func(m map[string]any) { req(m)["object"] = nil }), 400, "no object"},
		{"object not a pod", "", "", withRequest(func(m map[string]any) {
			req(m)["object"] = map[string]any{"spec": 5}
		}), 400, "not a v1 Pod"},
		{"object of another kind", "", "", withRequest(func(m map[string]any) {
			req(m)["object"] = map[string]any{"apiVersion": "v1", "kind": "Service"}
		}), 400, `kind "Service", not a v1 Pod`},
		{"too big", "", "", append(bytes.Repeat([]byte(" "), MaxBodyBytes), good...), 400, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			r := httptest.NewRequest(method, Path, bytes.NewReader(tc.body))
			switch tc.contentType {
			case "-":
			case "":
				r.Header.Set("Content-Type", "application/json; charset=utf-8")
			default:
				r.Header.Set("Content-Type", tc.contentType)
			}
			rec := httptest.NewRecorder()
			NewWebhook(testConfig(), nil, testr.New(t)).ServeHTTP(rec, r)
			if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.want) {
				t.Errorf("got %d %q, want %d containing %q", rec.Code, rec.Body.String(), tc.code, tc.want)
			}
		})
	}
}

// panicRecorder stands for a broken Event pipeline: admission must not notice.
type panicRecorder struct{}

func (panicRecorder) Eventf(k8sruntime.Object, k8sruntime.Object, string, string, string, string, ...any) {
	panic("event sink exploded")
}

func TestEventFailureDoesNotFailAdmission(t *testing.T) {
	w := NewWebhook(testConfig(), panicRecorder{}, testr.New(t))
	for _, uid := range []string{"u2", "u2b"} { // the recording goroutine survives the panic
		resp := admissionResponse(t, post(w, reviewBody(t, types.UID(uid), admissionv1.Create, "kong", podJSON(t, "kong"))), types.UID(uid))
		if len(resp.Patch) == 0 {
			t.Error("no patch")
		}
		flushEvents(t, w)
	}
}

func TestStuckRecorderDoesNotBlockAdmission(t *testing.T) {
	// A FakeRecorder without buffer blocks on every send, like a stuck Event sink.
	w := NewWebhook(testConfig(), events.NewFakeRecorder(0), testr.New(t))
	body := reviewBody(t, "u3", admissionv1.Create, "kong", podJSON(t, "kong"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range eventQueueLen + 10 { // more than the queue holds: the rest are dropped
			if rec := post(w, body); rec.Code != http.StatusOK {
				t.Errorf("status %d", rec.Code)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("admission blocked on the event recorder")
	}
}

// TestEventsOnlyOnWorkloadOwners: the pod's ownerReference is its creator's word, so the
// Event about the decision goes only to a namespaced workload kind, in the pod's namespace.
// Any other owner (a cluster-scoped Node, a kind of another group) gets none, whatever the
// decision; the pod is injected or skipped all the same.
func TestEventsOnlyOnWorkloadOwners(t *testing.T) {
	for _, tc := range []struct {
		name       string
		apiVersion string
		kind       string
		event      bool
	}{
		{"ReplicaSet", "apps/v1", "ReplicaSet", true},
		{"StatefulSet", "apps/v1", "StatefulSet", true},
		{"DaemonSet", "apps/v1", "DaemonSet", true},
		{"Job", "batch/v1", "Job", true},
		{"ReplicationController", "v1", "ReplicationController", true},
		{"Node", "v1", "Node", false},
		{"Namespace", "v1", "Namespace", false},
		{"unknown kind", "gateway.example.com/v1", "KongGateway", false},
		{"workload kind of another group", "evil.example.com/v1", "ReplicaSet", false},
		{"workload kind without a version", "apps", "ReplicaSet", false},
	} {
		for _, pod := range []string{"kong", "metrics-port-conflict"} {
			t.Run(tc.name+"/"+pod, func(t *testing.T) {
				p := decodeTestPod(t, podJSON(t, pod))
				yes := true
				p.OwnerReferences = []metav1.OwnerReference{{APIVersion: tc.apiVersion, Kind: tc.kind,
					Name: "worker-1", UID: "0b6f3a2e-2222-4c4c-9d9d-000000000001", Controller: &yes}}
				raw, err := json.Marshal(p)
				if err != nil {
					t.Fatal(err)
				}
				rec := &captureRecorder{}
				w := NewWebhook(testConfig(), rec, testr.New(t))
				resp := admissionResponse(t, post(w, reviewBody(t, "u-owner", admissionv1.Create, "tenant-a", raw)), "u-owner")
				flushEvents(t, w)
				if injected := len(resp.Patch) > 0; injected != (pod == "kong") {
					t.Errorf("patched %v: the owner must not change the decision", injected)
				}
				events := rec.recorded()
				if !tc.event {
					if len(events) != 0 {
						t.Errorf("events %+v about a %s %s, want none", events, tc.apiVersion, tc.kind)
					}
					return
				}
				if len(events) != 1 {
					t.Fatalf("events %+v, want one on the %s", events, tc.kind)
				}
				r := events[0].regarding
				if r == nil || r.APIVersion != tc.apiVersion || r.Kind != tc.kind || r.Name != "worker-1" ||
					r.Namespace != "tenant-a" || r.UID != p.OwnerReferences[0].UID {
					t.Errorf("event regarding %+v, want the %s worker-1 in namespace tenant-a", r, tc.kind)
				}
			})
		}
	}
}

func TestPodWithoutContainersIsLeftAlone(t *testing.T) {
	// A patch appending to a list the request does not have would not apply, and the API
	// server rejects a pod whose patch fails whatever the failurePolicy: no patch at all.
	raw := []byte(`{"metadata":{"labels":{"` + kwv1.LabelInject + `":"true"}},"spec":null}`)
	resp := admissionResponse(t, post(NewWebhook(testConfig(), nil, testr.New(t)),
		reviewBody(t, "u4", admissionv1.Create, "kong", raw)), "u4")
	if len(resp.Patch) != 0 {
		t.Errorf("patch %s sent for a pod without containers", resp.Patch)
	}
}

func TestAdmissionCheckRefusalLeavesPodUnchanged(t *testing.T) {
	refusal := errors.New(`pods "kong-x" is forbidden: violates PodSecurity "baseline:latest": non-default capabilities`)
	for name, check := range map[string]AdmissionCheck{
		"admitted": func(context.Context, *corev1.Pod, string) error { return nil },
		"refused":  func(context.Context, *corev1.Pod, string) error { return refusal },
		"timeout": func(ctx context.Context, _ *corev1.Pod, _ string) error {
			<-ctx.Done() // an API server that never answers: the check's own deadline ends it
			return ctx.Err()
		},
	} {
		t.Run(name, func(t *testing.T) {
			var checked *corev1.Pod
			rec := &captureRecorder{}
			w := NewWebhook(testConfig(), rec, testr.New(t)).WithAdmissionCheck(func(ctx context.Context, pod *corev1.Pod, ns string) error {
				if ns != "kong" {
					t.Errorf("checked in namespace %q", ns)
				}
				checked = pod
				return check(ctx, pod, ns)
			})
			resp := admissionResponse(t, post(w, reviewBody(t, "u5", admissionv1.Create, "kong", podJSON(t, "kong"))), "u5")
			flushEvents(t, w)
			if checked == nil || !hasAgent(checked) {
				t.Fatalf("the check did not see the injected pod: %+v", checked)
			}
			events := rec.recorded()
			if len(events) != 1 {
				t.Fatalf("events %+v", events)
			}
			e := events[0]
			if name == "admitted" {
				if len(resp.Patch) == 0 || e.reason != kwv1.ReasonInjected || e.eventtype != corev1.EventTypeNormal {
					t.Errorf("admitted pod: patch %d bytes, event %+v", len(resp.Patch), e)
				}
				return
			}
			if len(resp.Patch) != 0 {
				t.Errorf("patch sent although the API server would refuse the injected pod: %s", resp.Patch)
			}
			if e.reason != kwv1.ReasonInjectionSkipped || e.eventtype != corev1.EventTypeWarning ||
				!strings.Contains(e.note, ReasonAdmissionWouldReject) || !strings.Contains(e.note, "enforce=privileged") {
				t.Errorf("event %+v", e)
			}
			if len(resp.Warnings) != 1 || !strings.Contains(resp.Warnings[0], "not injected") {
				t.Errorf("warnings %q, want one saying why", resp.Warnings)
			}
			if name == "refused" && !strings.Contains(e.note, "violates PodSecurity") {
				t.Errorf("event does not quote the API server: %q", e.note)
			}
		})
	}
}

// TestReviewMemoryBounded: a review near the size limit (a pod with a 2.9 MB annotation, which
// no API server would store but anyone reaching the port can send) costs a small multiple of
// its size, and at most maxDecoding are decoded at once: the webhook's memory stays bounded
// under its container limit however many arrive.
func TestReviewMemoryBounded(t *testing.T) {
	raw := podJSON(t, "kong")
	big := strings.Replace(string(raw), `"labels":{`, `"annotations":{"big":"`+strings.Repeat("x", 2900000)+`"},"labels":{`, 1)
	body := reviewBody(t, "u", admissionv1.Create, "kong", []byte(big))
	w := NewWebhook(testConfig(), nil, logr.Discard())
	if rec := post(w, body); rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	const runs = 5
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		if rec := post(w, body); rec.Code != http.StatusOK {
			t.Fatalf("status %d", rec.Code)
		}
	}
	runtime.ReadMemStats(&after)
	perReview := float64(after.TotalAlloc-before.TotalAlloc) / runs
	t.Logf("%d-byte review: %.1f MiB allocated per review, at most %d decoded at once (%.0f MiB)",
		len(body), perReview/(1<<20), maxDecoding, maxDecoding*perReview/(1<<20))
	if limit := 6 * float64(len(body)); perReview > limit {
		t.Errorf("%.1f MiB allocated per review of %d bytes, want at most 6x its size", perReview/(1<<20), len(body))
	}
	if maxDecoding*perReview > 64<<20 {
		t.Errorf("%d reviews decoded at once can take %.0f MiB, more than half the webhook's 128 Mi limit", maxDecoding, maxDecoding*perReview/(1<<20))
	}
}

// TestSlowSendersCannotHoldTheWebhook: senders that trickle a review's body (the API server
// never does) hold the few decoding slots only for bodyReadTimeout: a real review behind
// them is still answered.
func TestSlowSendersCannotHoldTheWebhook(t *testing.T) {
	srv := httptest.NewServer(NewWebhook(testConfig(), nil, logr.Discard()))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	for range maxDecoding + 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"apiVer", Path)
	}
	time.Sleep(100 * time.Millisecond) // the slow senders are in the handler, holding slots
	body := reviewBody(t, "real", admissionv1.Create, "kong", podJSON(t, "kong"))
	client := &http.Client{Timeout: 20 * time.Second}
	start := time.Now()
	resp, err := client.Post(srv.URL+Path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("a real review behind %d slow senders: %v", maxDecoding+2, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a real review behind slow senders: status %d", resp.StatusCode)
	}
	t.Logf("answered after %v behind %d slow senders", time.Since(start).Round(time.Millisecond), maxDecoding+2)
}
