package ingest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/time/rate"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	authnclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
)

// Identity is who a verified report token belongs to: a pod, through the service account it
// runs as.
type Identity struct {
	Namespace      string
	Pod            string
	PodUID         types.UID
	ServiceAccount string
	// Expires is when the token stops being valid.
	Expires time.Time
	// ReportInterval is how often the pod's agent reports (its STATS_INTERVAL), read from the
	// pod when the token was first verified; 0 when the pod was not read.
	ReportInterval time.Duration
}

// AuthError is a refused token: Status is the HTTP status to answer with.
type AuthError struct {
	Status int
	Reason string
}

func (e *AuthError) Error() string { return e.Reason }

func refused(status int, format string, args ...any) *AuthError {
	return &AuthError{Status: status, Reason: fmt.Sprintf(format, args...)}
}

// Extra keys the API server puts on a TokenReview of a pod-bound service-account token.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
	saPrefix     = "system:serviceaccount:"
)

// AuthOptions configures an Authenticator.
type AuthOptions struct {
	// Audience the tokens must carry (v1alpha1.ReportAudience by default).
	Audience string
	// CacheSize bounds the verified tokens remembered (and, separately, the refused ones).
	CacheSize int
	// MaxCacheAge caps how long a verified token is trusted without a new TokenReview (a pod
	// deleted meanwhile is caught by the write's UID precondition anyway).
	MaxCacheAge time.Duration
	// RefusedCacheAge is how long a token the API server refused is refused without asking again.
	RefusedCacheAge time.Duration
	// ReviewsPerSecond and ReviewBurst bound the TokenReviews sent: a flood of forged tokens
	// costs the API server at most this much.
	ReviewsPerSecond float64
	ReviewBurst      int
	// SourceReviewsPerSecond and SourceReviewBurst bound the TokenReviews one client address
	// may cause (AuthenticateFrom), within the bound above: the pre-check cannot tell a forged
	// token with well-formed claims from a real one, and without this one client sending new
	// ones would spend the whole budget and keep every new agent token out.
	SourceReviewsPerSecond float64
	SourceReviewBurst      int
}

// DefaultAuthOptions: a cache for 4,096 pods (each agent's token is reviewed once per rotation,
// ~every 48 minutes, per manager replica) and at most 20 TokenReviews a second.
func DefaultAuthOptions(audience string) AuthOptions {
	return AuthOptions{Audience: audience, CacheSize: 4096, MaxCacheAge: 10 * time.Minute,
		RefusedCacheAge: time.Minute, ReviewsPerSecond: 20, ReviewBurst: 100,
		// An agent's token is new once per rotation and per manager start: a pod (one address)
		// needs one review at a time, and these leave the rest of the budget to other pods.
		SourceReviewsPerSecond: 2, SourceReviewBurst: 10}
}

// Authenticator verifies report tokens with TokenReview, caching the answers.
type Authenticator struct {
	o       AuthOptions
	reviews authnclient.TokenReviewInterface
	ok      *expirable.LRU[[sha256.Size]byte, verdict]
	bad     *expirable.LRU[[sha256.Size]byte, string]
	limiter *rate.Limiter
	sources *keyedLimiters[string] // per client address; nil: no such bound
	now     func() time.Time
	// admit, when set (NewHandler sets it), decides once per newly verified token whether its
	// pod may report at all; it may fill in the identity. A refusal with status 403 is cached
	// with the identity; any other error is not (the next report asks again).
	admit func(ctx context.Context, id *Identity) error
}

// verdict is what the cache remembers of a verified token: its identity, and the reason its
// pod may not report (nil: it may).
type verdict struct {
	id      Identity
	refusal *AuthError
}

// NewAuthenticator returns an Authenticator asking reviews (a clientset's
// AuthenticationV1().TokenReviews()).
func NewAuthenticator(reviews authnclient.TokenReviewInterface, o AuthOptions) *Authenticator {
	a := &Authenticator{
		o:       o,
		reviews: reviews,
		ok:      expirable.NewLRU[[sha256.Size]byte, verdict](o.CacheSize, nil, o.MaxCacheAge),
		bad:     expirable.NewLRU[[sha256.Size]byte, string](o.CacheSize, nil, o.RefusedCacheAge),
		limiter: rate.NewLimiter(rate.Limit(o.ReviewsPerSecond), o.ReviewBurst),
		now:     time.Now,
	}
	if o.SourceReviewsPerSecond > 0 && o.SourceReviewBurst > 0 {
		// An idle address's bucket is full again after burst/rate: forgetting it then loses nothing.
		idle := time.Duration(float64(o.SourceReviewBurst)/o.SourceReviewsPerSecond*float64(time.Second)) + time.Second
		a.sources = newKeyedLimiters[string](o.CacheSize, idle)
	}
	return a
}

// sourceAllows spends one of source's reviews ("" or no bound: always allowed).
func (a *Authenticator) sourceAllows(source string) bool {
	if a.sources == nil || source == "" {
		return true
	}
	return a.sources.get(source, func() *rate.Limiter {
		return rate.NewLimiter(rate.Limit(a.o.SourceReviewsPerSecond), a.o.SourceReviewBurst)
	}).Allow()
}

// claims are the parts of a Kubernetes service-account JWT the pre-check reads.
type claims struct {
	jwt.Claims
	Kubernetes struct {
		Namespace string `json:"namespace"`
		Pod       *struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"pod"`
	} `json:"kubernetes.io"`
}

// tokenAlgorithms are the signature algorithms the API server signs service-account tokens with.
var tokenAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512, jose.EdDSA}

// maxTokenBytes bounds a token before any parsing (the API server's are ~1 KiB).
const maxTokenBytes = 16 << 10

// Precheck reads a token's claims WITHOUT verifying its signature, to refuse at no cost what the
// API server would refuse anyway: not a JWT, another audience, expired, not bound to a pod.
// Only tokens that pass cost a TokenReview, which is the actual verification.
// It returns the token's expiry.
func Precheck(token, audience string, now time.Time) (time.Time, error) {
	if token == "" {
		return time.Time{}, refused(401, "no bearer token")
	}
	if len(token) > maxTokenBytes {
		return time.Time{}, refused(401, "token longer than %d bytes", maxTokenBytes)
	}
	tok, err := jwt.ParseSigned(token, tokenAlgorithms)
	if err != nil {
		return time.Time{}, refused(401, "token is not a signed JWT: %v", err)
	}
	var c claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return time.Time{}, refused(401, "token claims are malformed: %v", err)
	}
	if !c.Audience.Contains(audience) {
		return time.Time{}, refused(401, "token audience %q is not %q (use the projected token the webhook injects)", []string(c.Audience), audience)
	}
	if c.Expiry == nil || !c.Expiry.Time().After(now) {
		return time.Time{}, refused(401, "token expired")
	}
	if c.Kubernetes.Pod == nil || c.Kubernetes.Pod.Name == "" || c.Kubernetes.Namespace == "" {
		return time.Time{}, refused(401, "token is not bound to a pod (only a projected service-account token of the agent's pod is accepted)")
	}
	return c.Expiry.Time(), nil
}

// Authenticate verifies token and returns the pod it is bound to.
func (a *Authenticator) Authenticate(ctx context.Context, token string) (Identity, error) {
	return a.AuthenticateFrom(ctx, token, "")
}

// AuthenticateFrom is Authenticate for a token sent from the client address source, whose
// TokenReviews are bounded on their own as well (AuthOptions.SourceReviewsPerSecond).
func (a *Authenticator) AuthenticateFrom(ctx context.Context, token, source string) (Identity, error) {
	now := a.now()
	exp, err := Precheck(token, a.o.Audience, now)
	if err != nil {
		return Identity{}, err
	}
	key := sha256.Sum256([]byte(token))
	if v, ok := a.ok.Get(key); ok && v.id.Expires.After(now) {
		if v.refusal != nil {
			return Identity{}, v.refusal
		}
		return v.id, nil
	}
	if why, ok := a.bad.Get(key); ok {
		return Identity{}, refused(401, "%s", why)
	}
	if !a.sourceAllows(source) {
		return Identity{}, refused(429, "too many new tokens from this address to review; retry later")
	}
	if !a.limiter.Allow() {
		return Identity{}, refused(429, "too many new tokens to review; retry later")
	}
	tr, err := a.reviews.Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{
		Token: token, Audiences: []string{a.o.Audience}}}, metav1.CreateOptions{})
	if err != nil {
		return Identity{}, refused(503, "cannot review the token with the API server: %v", err)
	}
	id, why := identityOf(tr, a.o.Audience)
	if why != "" {
		a.bad.Add(key, why)
		return Identity{}, refused(401, "%s", why)
	}
	id.Expires = exp
	if a.admit != nil {
		if err := a.admit(ctx, &id); err != nil {
			var ae *AuthError
			if errors.As(err, &ae) && ae.Status == http.StatusForbidden {
				a.ok.Add(key, verdict{id: id, refusal: ae})
			}
			return Identity{}, err
		}
	}
	a.ok.Add(key, verdict{id: id}) // the LRU's own TTL (MaxCacheAge) caps how long it is trusted
	return id, nil
}

// Forget drops a token from the cache (its pod is gone).
func (a *Authenticator) Forget(token string) {
	key := sha256.Sum256([]byte(token))
	a.ok.Remove(key)
}

// identityOf reads the API server's verdict; why is non-empty when the token is refused.
func identityOf(tr *authnv1.TokenReview, audience string) (Identity, string) {
	st := tr.Status
	if !st.Authenticated {
		msg := "the API server did not authenticate the token"
		if st.Error != "" {
			msg += ": " + st.Error
		}
		return Identity{}, msg
	}
	if !slices.Contains(st.Audiences, audience) {
		return Identity{}, fmt.Sprintf("token is not valid for audience %q", audience)
	}
	rest, ok := strings.CutPrefix(st.User.Username, saPrefix)
	ns, sa, ok2 := strings.Cut(rest, ":")
	if !ok || !ok2 || ns == "" || sa == "" {
		return Identity{}, fmt.Sprintf("token belongs to %q, not to a service account", st.User.Username)
	}
	pod, uid := one(st.User.Extra[extraPodName]), one(st.User.Extra[extraPodUID])
	if pod == "" || uid == "" {
		return Identity{}, "token is not bound to a pod (only a projected service-account token of the agent's pod is accepted)"
	}
	return Identity{Namespace: ns, Pod: pod, PodUID: types.UID(uid), ServiceAccount: sa}, ""
}

func one(v authnv1.ExtraValue) string {
	if len(v) != 1 {
		return ""
	}
	return v[0]
}

// statusOf is the HTTP status for an Authenticate error.
func statusOf(err error) int {
	var ae *AuthError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 500
}
