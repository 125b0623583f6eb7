package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/kong-watcher/kong-watcher/api/agentenv"
	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// testConfig is DefaultConfig with a fixed version, so golden files do not depend on the build.
func testConfig() Config {
	c := DefaultConfig()
	c.Image = "kong-watcher/agent:v1.2.3"
	c.AgentVersion = "v1.2.3"
	c.ExcludedNamespaces = []string{"kube-system", "kong-watcher-system"}
	c.Report = ReportConfig{URL: "https://kong-watcher-webhook-service.kong-watcher-system.svc:443" + kwv1.ReportPath,
		Audience: kwv1.ReportAudience, TokenExpirationSeconds: 3600, CA: func() []byte { return []byte(testCA) }}
	return c
}

// testCA stands in for the manager's CA bundle (the webhook copies it as it is).
const testCA = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"

// podJSON reads testdata/pods/<name>.yaml as the JSON the API server would send.
func podJSON(t testing.TB, name string) []byte {
	t.Helper()
	y, err := os.ReadFile(filepath.Join("testdata", "pods", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return j
}

func decodeTestPod(t testing.TB, raw []byte) *corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	if err := json.Unmarshal(raw, &pod); err != nil {
		t.Fatalf("decoding pod: %v\n%s", err, raw)
	}
	return &pod
}

// reviewBody wraps a pod in an admission.k8s.io/v1 AdmissionReview request body.
func reviewBody(t testing.TB, uid types.UID, op admissionv1.Operation, namespace string, podRaw []byte) []byte {
	t.Helper()
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       uid,
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: namespace,
			Operation: op,
			Object:    runtime.RawExtension{Raw: podRaw},
		},
	}
	b, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends body to the webhook the way the API server does.
func post(w http.Handler, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	w.ServeHTTP(rec, req)
	return rec
}

// admissionResponse checks the HTTP answer is a 200 AdmissionReview and returns its response.
func admissionResponse(t testing.TB, rec *httptest.ResponseRecorder, uid types.UID) *admissionv1.AdmissionResponse {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", rec.Code, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v\n%s", err, rec.Body)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" {
		t.Errorf("response apiVersion/kind %q/%q", out.APIVersion, out.Kind)
	}
	if out.Request != nil {
		t.Error("response echoes the request; it should not")
	}
	if out.Response == nil {
		t.Fatal("AdmissionReview has no response")
	}
	if out.Response.UID != uid {
		t.Errorf("response uid %q, want %q", out.Response.UID, uid)
	}
	if !out.Response.Allowed {
		t.Error("pod denied; the webhook must never deny")
	}
	if (len(out.Response.Patch) == 0) != (out.Response.PatchType == nil) {
		t.Errorf("patch (%d bytes) and patchType (%v) disagree", len(out.Response.Patch), out.Response.PatchType)
	}
	if out.Response.PatchType != nil && *out.Response.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Errorf("patchType %q", *out.Response.PatchType)
	}
	return out.Response
}

// recordedEvent is one Eventf call.
type recordedEvent struct {
	regarding      *corev1.ObjectReference
	eventtype      string
	reason, action string
	note           string
}

// captureRecorder implements events.EventRecorder and keeps what it is given, so tests can
// check the owner reference as well as the text (events.FakeRecorder only keeps the text).
type captureRecorder struct {
	mu     sync.Mutex
	events []recordedEvent
}

func (c *captureRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, action, note string, args ...any) {
	ref, _ := regarding.(*corev1.ObjectReference)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, recordedEvent{regarding: ref, eventtype: eventtype, reason: reason,
		action: action, note: sprintf(note, args...)})
}

func (c *captureRecorder) recorded() []recordedEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]recordedEvent(nil), c.events...)
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

// flushEvents waits until every Event queued so far has reached the recorder.
func flushEvents(t testing.TB, w *Webhook) {
	t.Helper()
	done := make(chan struct{})
	w.enqueueEvent(func() { close(done) })
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("events not flushed within 5s")
	}
}

// checkAgentEnv fails unless every variable of the agent's environment is a setting of the
// agent's contract (api/agentenv) and, when the webhook renders its value, the agent would
// accept that value.
func checkAgentEnv(t *testing.T, env []corev1.EnvVar) {
	t.Helper()
	settings := map[string]agentenv.Var{}
	for _, v := range agentenv.All {
		settings[v.Info().Env] = v
	}
	for _, e := range env {
		s, ok := settings[e.Name]
		switch {
		case !ok:
			t.Errorf("%s is not one of the agent's settings", e.Name)
		case e.ValueFrom == nil:
			if err := s.Check(e.Value); err != nil {
				t.Errorf("the agent would refuse %s: %v", e.Name, err)
			}
		}
	}
}
