package ingest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	authnclient "k8s.io/client-go/kubernetes/typed/authentication/v1"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// The claims of a projected service-account token as the API server issues them.
type k8sClaims struct {
	Namespace      string     `json:"namespace,omitempty"`
	Pod            *objectRef `json:"pod,omitempty"`
	ServiceAccount *objectRef `json:"serviceaccount,omitempty"`
}

type objectRef struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

type tokenClaims struct {
	jwt.Claims
	Kubernetes *k8sClaims `json:"kubernetes.io,omitempty"`
}

var testKey = func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}()

// signed is a JWT with claims c, signed with alg by a key nobody checks (Precheck does not
// verify signatures: the TokenReview does).
func signed(t testing.TB, alg jose.SignatureAlgorithm, key any, c any) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := jwt.Signed(sig).Claims(c).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var testNow = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// podToken is what the kubelet mounts for the agent: audience, one hour, bound to pod kong/kong-0.
func podToken(mod func(*tokenClaims)) tokenClaims {
	c := tokenClaims{
		Claims: jwt.Claims{Issuer: "https://kubernetes.default.svc", Subject: "system:serviceaccount:kong:kong",
			Audience: jwt.Audience{v1alpha1.ReportAudience}, IssuedAt: jwt.NewNumericDate(testNow.Add(-time.Minute)),
			NotBefore: jwt.NewNumericDate(testNow.Add(-time.Minute)), Expiry: jwt.NewNumericDate(testNow.Add(time.Hour))},
		Kubernetes: &k8sClaims{Namespace: "kong", Pod: &objectRef{Name: "kong-0", UID: "1b4e28ba-2fa1-11d2-883f-0016d3cca427"},
			ServiceAccount: &objectRef{Name: "kong", UID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}},
	}
	if mod != nil {
		mod(&c)
	}
	return c
}

func TestPrecheck(t *testing.T) {
	es := func(c tokenClaims) string { return signed(t, jose.ES256, testKey, c) }
	valid := es(podToken(nil))
	b64 := base64.RawURLEncoding.EncodeToString
	unsigned := b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + b64([]byte(`{"aud":["`+v1alpha1.ReportAudience+`"],"exp":4102444800,"kubernetes.io":{"namespace":"kong","pod":{"name":"kong-0","uid":"u"}}}`)) + "."

	exp, err := Precheck(valid, v1alpha1.ReportAudience, testNow)
	if err != nil || !exp.Equal(testNow.Add(time.Hour)) {
		t.Fatalf("valid token: exp %v err %v, want %v", exp, err, testNow.Add(time.Hour))
	}
	if _, err := Precheck(es(podToken(func(c *tokenClaims) {
		c.Audience = jwt.Audience{"https://kubernetes.default.svc", v1alpha1.ReportAudience}
	})), v1alpha1.ReportAudience, testNow); err != nil {
		t.Errorf("our audience among others: %v", err)
	}

	for _, tc := range []struct {
		name, token, want string
	}{
		{"empty", "", "no bearer token"},
		{"not a JWT", "not-a-jwt", "not a signed JWT"},
		{"three garbage parts", "a.b.c", "not a signed JWT"},
		{"claims not JSON", b64([]byte(`{"alg":"ES256"}`)) + "." + b64([]byte("not json")) + "." + b64([]byte("sig")), "claims are malformed"},
		{"too long", valid + strings.Repeat("A", maxTokenBytes), "longer than"},
		{"unsigned (alg none)", unsigned, "not a signed JWT"},
		{"HMAC-signed", signed(t, jose.HS256, []byte("0123456789abcdef0123456789abcdef"), podToken(nil)), "not a signed JWT"},
		{"expired", es(podToken(func(c *tokenClaims) { c.Expiry = jwt.NewNumericDate(testNow.Add(-time.Second)) })), "expired"},
		{"expires now", es(podToken(func(c *tokenClaims) { c.Expiry = jwt.NewNumericDate(testNow) })), "expired"},
		{"no expiry", es(podToken(func(c *tokenClaims) { c.Expiry = nil })), "expired"},
		{"API server audience", es(podToken(func(c *tokenClaims) { c.Audience = jwt.Audience{"https://kubernetes.default.svc"} })), "audience"},
		{"no audience", es(podToken(func(c *tokenClaims) { c.Audience = nil })), "audience"},
		{"audience prefix", es(podToken(func(c *tokenClaims) { c.Audience = jwt.Audience{v1alpha1.ReportAudience + "x"} })), "audience"},
		{"no kubernetes.io claim", es(podToken(func(c *tokenClaims) { c.Kubernetes = nil })), "not bound to a pod"},
		{"no pod claim (kubectl create token)", es(podToken(func(c *tokenClaims) { c.Kubernetes.Pod = nil })), "not bound to a pod"},
		{"empty pod name", es(podToken(func(c *tokenClaims) { c.Kubernetes.Pod.Name = "" })), "not bound to a pod"},
		{"no namespace", es(podToken(func(c *tokenClaims) { c.Kubernetes.Namespace = "" })), "not bound to a pod"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Precheck(tc.token, v1alpha1.ReportAudience, testNow)
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Status != 401 {
				t.Fatalf("err = %v, want a 401 AuthError", err)
			}
			if !strings.Contains(ae.Reason, tc.want) {
				t.Errorf("reason %q does not say %q", ae.Reason, tc.want)
			}
		})
	}
}

// fakeReviews answers TokenReviews with answer and counts them.
type fakeReviews struct {
	authnclient.TokenReviewInterface
	n      atomic.Int32
	answer func(*authnv1.TokenReview) (*authnv1.TokenReview, error)
}

func (f *fakeReviews) Create(_ context.Context, tr *authnv1.TokenReview, _ metav1.CreateOptions) (*authnv1.TokenReview, error) {
	f.n.Add(1)
	return f.answer(tr)
}

func reviewOf(user string, extra map[string]authnv1.ExtraValue, audiences ...string) func(*authnv1.TokenReview) (*authnv1.TokenReview, error) {
	return func(tr *authnv1.TokenReview) (*authnv1.TokenReview, error) {
		out := tr.DeepCopy()
		out.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: audiences,
			User: authnv1.UserInfo{Username: user, Extra: extra}}
		return out, nil
	}
}

func TestAuthenticate(t *testing.T) {
	token := signed(t, jose.ES256, testKey, podToken(nil))
	bound := map[string]authnv1.ExtraValue{extraPodName: {"kong-0"}, extraPodUID: {"uid-0"}}
	newAuth := func(answer func(*authnv1.TokenReview) (*authnv1.TokenReview, error)) (*Authenticator, *fakeReviews) {
		f := &fakeReviews{answer: answer}
		a := NewAuthenticator(f, DefaultAuthOptions(v1alpha1.ReportAudience))
		a.now = func() time.Time { return testNow }
		return a, f
	}
	status := func(err error) int {
		var ae *AuthError
		if errors.As(err, &ae) {
			return ae.Status
		}
		return 0
	}

	t.Run("accepted and cached", func(t *testing.T) {
		a, f := newAuth(reviewOf("system:serviceaccount:kong:kong", bound, v1alpha1.ReportAudience))
		for range 3 {
			id, err := a.Authenticate(t.Context(), token)
			exp := id.Expires
			id.Expires = time.Time{}
			if err != nil || id != (Identity{Namespace: "kong", Pod: "kong-0", PodUID: "uid-0", ServiceAccount: "kong"}) ||
				!exp.Equal(testNow.Add(time.Hour)) {
				t.Fatalf("identity %+v err %v", id, err)
			}
		}
		if n := f.n.Load(); n != 1 {
			t.Errorf("%d TokenReviews for one token, want 1 (cached)", n)
		}
		a.Forget(token)
		if _, err := a.Authenticate(t.Context(), token); err != nil || f.n.Load() != 2 {
			t.Errorf("after Forget: err %v, %d reviews, want a new review", err, f.n.Load())
		}
	})
	t.Run("pre-check refusals cost no review", func(t *testing.T) {
		a, f := newAuth(reviewOf("system:serviceaccount:kong:kong", bound, v1alpha1.ReportAudience))
		for _, tok := range []string{"", "garbage", signed(t, jose.ES256, testKey, podToken(func(c *tokenClaims) { c.Kubernetes.Pod = nil }))} {
			if _, err := a.Authenticate(t.Context(), tok); status(err) != 401 {
				t.Errorf("token %.20q: %v, want 401", tok, err)
			}
		}
		if n := f.n.Load(); n != 0 {
			t.Errorf("%d TokenReviews, want none", n)
		}
	})
	for _, tc := range []struct {
		name   string
		answer func(*authnv1.TokenReview) (*authnv1.TokenReview, error)
		want   int
		cached bool // a second try asks no new review
	}{
		{"not authenticated", func(tr *authnv1.TokenReview) (*authnv1.TokenReview, error) {
			out := tr.DeepCopy()
			out.Status.Error = "pod kong-0 not found"
			return out, nil
		}, 401, true},
		{"other audience", reviewOf("system:serviceaccount:kong:kong", bound, "https://kubernetes.default.svc"), 401, true},
		{"not a service account", reviewOf("alice", bound, v1alpha1.ReportAudience), 401, true},
		{"not bound to a pod", reviewOf("system:serviceaccount:kong:kong", nil, v1alpha1.ReportAudience), 401, true},
		{"two pod names", reviewOf("system:serviceaccount:kong:kong", map[string]authnv1.ExtraValue{
			extraPodName: {"a", "b"}, extraPodUID: {"u"}}, v1alpha1.ReportAudience), 401, true},
		{"API server unreachable", func(*authnv1.TokenReview) (*authnv1.TokenReview, error) {
			return nil, errors.New("connection refused")
		}, 503, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, f := newAuth(tc.answer)
			for range 2 {
				if _, err := a.Authenticate(t.Context(), token); status(err) != tc.want {
					t.Fatalf("err %v, want status %d", err, tc.want)
				}
			}
			if n, want := f.n.Load(), map[bool]int32{true: 1, false: 2}[tc.cached]; n != want {
				t.Errorf("%d TokenReviews for two tries, want %d", n, want)
			}
		})
	}
	t.Run("review rate limit", func(t *testing.T) {
		f := &fakeReviews{answer: reviewOf("system:serviceaccount:kong:kong", bound, v1alpha1.ReportAudience)}
		o := DefaultAuthOptions(v1alpha1.ReportAudience)
		o.ReviewsPerSecond, o.ReviewBurst = 0.001, 2
		a := NewAuthenticator(f, o)
		a.now = func() time.Time { return testNow }
		got := map[int]int{}
		for i := range 5 {
			tok := signed(t, jose.ES256, testKey, podToken(func(c *tokenClaims) { c.ID = string(rune('a' + i)) }))
			_, err := a.Authenticate(t.Context(), tok)
			got[status(err)]++
		}
		if got[0] != 2 || got[429] != 3 || f.n.Load() != 2 {
			t.Errorf("outcomes %v with %d reviews, want 2 accepted, 3 x 429, 2 reviews", got, f.n.Load())
		}
	})
}

// TestSourceReviewLimit: one address sending forged tokens (well-formed claims, which the
// pre-check cannot tell from real ones) spends only its own share of the TokenReviews; a new
// agent token from another address is still reviewed.
func TestSourceReviewLimit(t *testing.T) {
	bound := map[string]authnv1.ExtraValue{extraPodName: {"kong-0"}, extraPodUID: {"uid-0"}}
	status := func(err error) int {
		var ae *AuthError
		if errors.As(err, &ae) {
			return ae.Status
		}
		return 0
	}
	f := &fakeReviews{answer: reviewOf("system:serviceaccount:kong:kong", bound, v1alpha1.ReportAudience)}
	o := DefaultAuthOptions(v1alpha1.ReportAudience)
	o.ReviewsPerSecond, o.ReviewBurst = 0.001, 20
	o.SourceReviewsPerSecond, o.SourceReviewBurst = 0.001, 3
	a := NewAuthenticator(f, o)
	a.now = func() time.Time { return testNow }
	tok := func(i int) string {
		return signed(t, jose.ES256, testKey, podToken(func(c *tokenClaims) { c.ID = "t" + strconv.Itoa(i) }))
	}
	got := map[int]int{}
	for i := range 30 {
		_, err := a.AuthenticateFrom(t.Context(), tok(i), "10.0.0.66")
		got[status(err)]++
	}
	if got[0] != 3 || got[429] != 27 || f.n.Load() != 3 {
		t.Errorf("one address, 30 new tokens: outcomes %v with %d reviews, want 3 reviewed, 27 x 429", got, f.n.Load())
	}
	if _, err := a.AuthenticateFrom(t.Context(), tok(100), "10.0.0.7"); err != nil {
		t.Errorf("a new token from another address: %v", err)
	}
	// Without an address (Authenticate) only the overall bound applies.
	if _, err := a.Authenticate(t.Context(), tok(101)); err != nil {
		t.Errorf("a new token without an address: %v", err)
	}
	if f.n.Load() != 5 {
		t.Errorf("%d TokenReviews, want 5", f.n.Load())
	}
}
