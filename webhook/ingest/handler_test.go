package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

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
				Annotations: map[string]string{v1alpha1.AnnotationHighErrorRateThreshold: "10%", "user/note": "x"}}})
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
