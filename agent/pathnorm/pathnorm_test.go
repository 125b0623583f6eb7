package pathnorm

import (
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNormalise(t *testing.T) {
	cases := []struct{ in, want string }{
		// Fixed tokens and odd forms.
		{"", Invalid},
		{"*", "*"},
		{"users", Invalid},
		{"example.com:443", Invalid}, // CONNECT authority-form
		{"?a=b", Invalid},
		{"/", "/"},
		{"//", "/"},
		{"/?x=1", "/"},
		{"http://example.com", "/"},
		{"https://example.com/users/42?x=1", "/users/{id}"},
		{"HTTP://Example.com:8080/a", "/a"},
		{"ftp+x://h/a", "/a"},
		{"1http://h/a", Invalid},
		// Query, fragment, slashes.
		{"/health", "/health"},
		{"/health?probe=1", "/health"},
		{"/docs#section-2", "/docs"},
		{"/a//b///c/", "/a/b/c"},
		// Numbers, dates, IPs.
		{"/users/123", "/users/{id}"},
		{"/users/0/orders/99999999999999999999", "/users/{id}/orders/{id}"},
		{"/reports/2024-01-31", "/reports/{id}"},
		{"/at/12:30:00", "/at/{id}"},
		{"/ip/10.0.0.1", "/ip/{id}"},
		{"/price/-1.5", "/price/{id}"},
		// Hex and UUIDs.
		{"/items/550e8400-e29b-41d4-a716-446655440000", "/items/{id}"},
		{"/objects/507f1f77bcf86cd799439011", "/objects/{id}"},
		{"/commits/3f786850e387550fdab836ed7e6dc881de23001b", "/commits/{id}"},
		{"/x/deadbeef", "/x/deadbeef"}, // hex but no digit: could be a word
		{"/x/cafe1234", "/x/{id}"},
		{"/x/abc123", "/x/{id}"}, // digit-heavy
		// Digit-heavy and prefixed ids.
		{"/invoices/INV-2024-0001", "/invoices/{id}"},
		{"/customers/cus_NffrFeUfNV2Hib", "/customers/{id}"},
		// Tokens.
		{"/reset/eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "/reset/{id}"},
		{"/s/aZ3kPq9XvB2mN7tR", "/s/{id}"},
		{"/s/qWeRtYuIoPaSdFgH", "/s/{id}"}, // mixed case, no digits, random
		// E-mail, encoded, odd bytes.
		{"/users/bob@example.com", "/users/{id}"},
		{"/search/hello%20world", "/search/{id}"},
		{"/a/%2e%2e/b", "/a/{id}/b"},
		{"/caf\xc3\xa9/menu", "/{id}/menu"},
		{"/bad/\xff\xfe", "/bad/{id}"},
		{"/sp ace/x", "/{id}/x"},
		{"/tpl/{name}", "/tpl/{id}"},
		// Kept: versions and words.
		{"/api/v1/users", "/api/v1/users"},
		{"/apis/v2beta1/x", "/apis/v2beta1/x"},
		{"/v1.2/status", "/v1.2/status"},
		{"/oauth2/token", "/oauth2/token"},
		{"/html5/ipv6", "/html5/ipv6"},
		{"/getUserByIdAndName", "/getUserByIdAndName"},
		{"/blog/how-to-install-kong-gateway", "/blog/how-to-install-kong-gateway"},
		{"/status_page/.well-known", "/status_page/.well-known"},
		{"/a/../b/./c", "/a/../b/./c"}, // raw path, not resolved: no decoding, no guessing
		{"/{id}/x", "/{id}/x"},
		// Bounds.
		{"/1/2/3/4/5/6/7/8/9/10/11/12/13/14", "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{...}"},
		{"/" + strings.Repeat("a", 65), "/{id}"},
		{"/" + strings.Repeat("abcdefghij/", 20), "/abcdefghij/abcdefghij/abcdefghij/abcdefghij/abcdefghij/abcdefghij/abcdefghij/abcdefghij/abcdefghij/abcdefghij/abcdefghij/{...}"},
		{"/a/{...}/b", "/a/{...}"},
	}
	for _, c := range cases {
		got := Normalise(c.in)
		if got != c.want {
			t.Errorf("Normalise(%q) = %q, want %q", c.in, got, c.want)
		}
		if again := Normalise(got); again != got {
			t.Errorf("not idempotent: Normalise(%q) = %q, again %q", c.in, got, again)
		}
	}
}

// The entropy heuristics must catch nearly all random tokens and keep ordinary words.
func TestRandomTokensCollapse(t *testing.T) {
	const (
		base64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
		base62    = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
		lower     = "abcdefghijklmnopqrstuvwxyz"
		base32    = "abcdefghijklmnopqrstuvwxyz234567" // RFC 4648, as lower-cased by many APIs
		base32Up  = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
		base36    = "abcdefghijklmnopqrstuvwxyz0123456789"
	)
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		name, alphabet string
		min, max       int
		// maxKept is the measured rate (of 20000) with some margin: the short end of a
		// length range is where a random token can read like a word.
		maxKept float64
	}{
		{"base64url 16-48", base64url, 16, 48, 0.01}, // measured 0.1%
		{"base62 12-32", base62, 12, 32, 0.01},       // measured 0.4%
		{"lowercase 12-32", lower, 12, 32, 0.03},     // measured 1.6% (9% at 12, 2% at 16)
		{"lowercase 16-32", lower, 16, 32, 0.01},     // measured 0.5%
		{"base32 12-32", base32, 12, 32, 0.01},       // measured 0.3%
		{"BASE32 12-32", base32Up, 12, 32, 0.01},     // measured 0.3%
		{"base36 12-32", base36, 12, 32, 0.01},       // measured 0.2%
	} {
		kept := 0
		const n = 20000
		var example string
		for i := 0; i < n; i++ {
			b := make([]byte, c.min+r.IntN(c.max-c.min+1))
			for j := range b {
				b[j] = c.alphabet[r.IntN(len(c.alphabet))]
			}
			if got := Normalise("/t/" + string(b)); got != "/t/{id}" {
				kept++
				example = string(b)
			}
		}
		if float64(kept) > c.maxKept*n {
			t.Errorf("%s: %d of %d random tokens kept as words (want <= %.1f%%), e.g. %q", c.name, kept, n, 100*c.maxKept, example)
		}
		t.Logf("%s: %d of %d random tokens kept (%.2f%%), e.g. %q", c.name, kept, n, 100*float64(kept)/n, example)
	}
}

func TestAppendDoesNotAllocate(t *testing.T) {
	buf := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(100, func() {
		buf = Append(buf[:0], "/api/v1/users/12345/orders?limit=10")
	})
	if allocs != 0 {
		t.Errorf("Append allocates %v times per call", allocs)
	}
	allocs = testing.AllocsPerRun(100, func() { _ = Normalise("/api/v1/users") })
	if allocs != 0 {
		t.Errorf("Normalise of a normal path allocates %v times per call", allocs)
	}
}

func checkInvariants(t *testing.T, in string) {
	got := Normalise(in)
	if again := Normalise(got); again != got {
		t.Fatalf("not idempotent: %q -> %q -> %q", in, got, again)
	}
	if strings.ContainsAny(got, "?#") {
		t.Fatalf("Normalise(%q) = %q keeps a query or fragment", in, got)
	}
	if len(got) > MaxLen {
		t.Fatalf("Normalise(%q) = %q is %d bytes, over %d", in, got, len(got), MaxLen)
	}
	if !utf8.ValidString(got) {
		t.Fatalf("Normalise(%q) = %q is not UTF-8", in, got)
	}
	for i := 0; i < len(got); i++ {
		if got[i] < 0x21 || got[i] > 0x7e {
			t.Fatalf("Normalise(%q) = %q has a non-printable byte", in, got)
		}
	}
	if got != Invalid && got != Asterisk && !strings.HasPrefix(got, "/") {
		t.Fatalf("Normalise(%q) = %q is neither a path nor a fixed token", in, got)
	}
	if n := strings.Count(got, "/"); n > MaxSegments+1 {
		t.Fatalf("Normalise(%q) = %q has %d segments", in, got, n)
	}
}

// checkCutInvariants: a URI cut inside its path is marked, one cut elsewhere is not, and the
// result obeys every invariant of Normalise.
func checkCutInvariants(t *testing.T, in string) {
	got := NormaliseCut(in, true)
	checkInvariants(t, got)
	if again := Normalise(got); again != got {
		t.Fatalf("not idempotent: NormaliseCut(%q) = %q, Normalise of it %q", in, got, again)
	}
	if len(got) > MaxLen {
		t.Fatalf("NormaliseCut(%q) = %q is %d bytes, over %d", in, got, len(got), MaxLen)
	}
	inPath := !strings.ContainsAny(in, "?#")
	if got != Invalid && inPath && !strings.HasSuffix(got, "/"+Truncated) {
		t.Fatalf("NormaliseCut(%q) = %q is not marked", in, got)
	}
	if !inPath && got != Normalise(in) {
		t.Fatalf("NormaliseCut(%q) = %q, Normalise %q: a cut after the path changed the route", in, got, Normalise(in))
	}
	if string(AppendCut(nil, in, false)) != Normalise(in) {
		t.Fatalf("AppendCut(%q, false) differs from Normalise", in)
	}
}

func FuzzNormalise(f *testing.F) {
	for _, s := range []string{"", "*", "/", "/users/123?x=1", "http://h/a/b", "/a//b/",
		"/" + strings.Repeat("abcdefghij/", 20), "/a/{...}/b", "/\xff", "/v1/x#y",
		"/reset-password/qwhzkvtrplmbnxcdfgjsy", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
		"/verify/mfrggzdfmztwq2lknnwg23tpoj2g", "http://example.co", "/users/123/orders/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		checkInvariants(t, in)
		checkCutInvariants(t, in)
	})
}

func BenchmarkNormalise(b *testing.B) {
	buf := make([]byte, 0, 256)
	uris := []string{"/", "/api/v1/users/12345/orders?limit=10", "/items/550e8400-e29b-41d4-a716-446655440000", "/static/app.js"}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		buf = Append(buf[:0], uris[i%len(uris)])
	}
}

func TestWordsKept(t *testing.T) {
	for _, w := range []string{"getUserByIdAndName", "XMLHttpRequestHandler", "listNamespacedPods",
		"customerPaymentMethods", "serviceAccountTokens", "OpenIDConnectDiscovery",
		"createOrUpdateResource", "openid-configuration", "authorization_code_grant",
		"ProductCategoryListing", "kubernetesDashboard", "ServiceAccountToken", "healthcheck-status",
		"acme-challenge", "PaymentIntentsSearch", "application.properties", "favicon-32x32.png",
		// Words joined without separators (Kubernetes, Kong's CRDs, GitHub, Stripe).
		"customresourcedefinitions", "mutatingwebhookconfigurations", "validatingadmissionpolicybindings",
		"horizontalpodautoscalers", "persistentvolumeclaims", "clusterrolebindings", "poddisruptionbudgets",
		"certificatesigningrequests", "selfsubjectaccessreviews", "selfsubjectrulesreviews",
		"prioritylevelconfigurations", "csistoragecapacities", "endpointslices", "ephemeralcontainers",
		"kongclusterplugins", "kongconsumers", "tcpingresses", "udpingresses", "gatewayclasses",
		"apiextensions.k8s.io", "admissionregistration.k8s.io", "rbac.authorization.k8s.io",
		"configuration.konghq.com", "xmlhttprequest", "invoiceitems", "balance_transactions",
		"verification_sessions", "private-vulnerability-reporting", "oauth-authorization-server",
		"elasticsearch", "opentelemetry", "alertmanager", "recommendations", "shoppingcart",
		"x509certificates", "oauth2callback", "base64encoded", "sha256checksum", "ipv6addresses",
		"utf8mb4general", "v1beta1resources", "k8sresources",
		// Long dictionary words with unusual letter pairs.
		"cryptography", "rhythmically", "spendthrifts", "strengthening", "psychotherapy",
		"transcriptions", "knightsbridge", "schwarzenegger"} {
		if got := Normalise("/" + w); got != "/"+w {
			t.Errorf("Normalise(/%s) = %q, want the word kept", w, got)
		}
	}
}

// Routes of real APIs keep their words and lose their ids.
func TestRealWorldPaths(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		// Kong Admin API.
		{"/services", "/services"},
		{"/services/my-service/routes", "/services/my-service/routes"},
		{"/routes/6f1c3a0e-8b7d-4f5e-9c2a-1b3d5e7f9a0c", "/routes/{id}"},
		{"/consumers/alice/key-auth", "/consumers/alice/key-auth"},
		{"/consumers/alice/key-auth/7b2e4c8a-1d3f-4a5b-9c6d-0e1f2a3b4c5d", "/consumers/alice/key-auth/{id}"},
		{"/upstreams/x/targets", "/upstreams/x/targets"},
		{"/upstreams/my-upstream/health", "/upstreams/my-upstream/health"},
		{"/plugins/enabled", "/plugins/enabled"},
		{"/status", "/status"},
		{"/schemas/plugins/rate-limiting", "/schemas/plugins/rate-limiting"},
		{"/certificates", "/certificates"},
		{"/ca_certificates", "/ca_certificates"},
		{"/snis", "/snis"},
		// GitHub.
		{"/repos/octocat/hello-world/pulls/123/comments", "/repos/octocat/hello-world/pulls/{id}/comments"},
		{"/repos/kubernetes/kubernetes/issues/118234", "/repos/kubernetes/kubernetes/issues/{id}"},
		{"/orgs/kong/members", "/orgs/kong/members"},
		// Stripe.
		{"/v1/customers/cus_NffrFeUfNV2Hib/sources", "/v1/customers/{id}/sources"},
		{"/v1/payment_intents/pi_3MtwBwLkdIwHu7ix28a3tqPa/confirm", "/v1/payment_intents/{id}/confirm"},
		// Kubernetes.
		{"/api/v1/namespaces/default/pods", "/api/v1/namespaces/default/pods"},
		{"/api/v1/namespaces/kube-system/pods/coredns-5d78c9869d-xk2lp/log", "/api/v1/namespaces/kube-system/pods/{id}/log"},
		{"/apis/apps/v1/deployments", "/apis/apps/v1/deployments"},
		{"/apis/apps/v1/namespaces/default/deployments/web/scale", "/apis/apps/v1/namespaces/default/deployments/web/scale"},
		{"/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"},
		{"/apis/configuration.konghq.com/v1/namespaces/kong/kongplugins", "/apis/configuration.konghq.com/v1/namespaces/kong/kongplugins"},
		// S3-like object keys: dates and UUID-named objects are ids, file names stay.
		{"/my-bucket/photos/2024/01/IMG_1234.jpg", "/my-bucket/photos/{id}/{id}/IMG_1234.jpg"},
		{"/my-bucket/uploads/3fa85f64-5717-4562-b3fc-2c963f66afa6.png", "/my-bucket/uploads/{id}"},
		{"/my-bucket/exports/report.csv?X-Amz-Signature=4f1c", "/my-bucket/exports/report.csv"},
		// OAuth2 / OpenID Connect.
		{"/oauth2/authorize?client_id=abc&state=xyz", "/oauth2/authorize"},
		{"/oauth2/token", "/oauth2/token"},
		{"/.well-known/openid-configuration", "/.well-known/openid-configuration"},
		{"/.well-known/jwks.json", "/.well-known/jwks.json"},
		// Web.
		{"/wp-login.php", "/wp-login.php"},
		{"/wp-admin/admin-ajax.php", "/wp-admin/admin-ajax.php"},
		{"/xmlrpc.php", "/xmlrpc.php"},
		{"/favicon.ico", "/favicon.ico"},
		// Content-hashed asset names change with every build: one row for all of them.
		{"/static/js/main.8e3f2a1c.js", "/static/js/{id}"},
		{"/static/css/main.5f2b9c4d.chunk.css", "/static/css/{id}"},
		// Random tokens: lowercase, base32, base36, JWT.
		{"/reset-password/qwhzkvtrplmbnxcdfgjsy", "/reset-password/{id}"},
		{"/share/xkcdqzptlmvw", "/share/{id}"},
		{"/verify/mfrggzdfmztwq2lknnwg23tpoj2g", "/verify/{id}"},
		{"/confirm/MFRGGZDFMZTWQ2LK", "/confirm/{id}"},
		{"/invite/k3jd9x0qpl2m7fz8", "/invite/{id}"},
		{"/t/eyJhbGciOiJIUzI1NiJ9", "/t/{id}"},
		{"/auth/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "/auth/{id}"},
		// Names stay: the goal is random tokens, not every name.
		{"/users/alice", "/users/alice"},
		{"/users/bob-smith/repos", "/users/bob-smith/repos"},
	} {
		if got := Normalise(c.in); got != c.want {
			t.Errorf("Normalise(%q) = %q, want %q", c.in, got, c.want)
		}
		if again := Normalise(c.want); again != c.want {
			t.Errorf("not idempotent: Normalise(%q) = %q", c.want, again)
		}
	}
}

// A URI a data path cut keeps its complete segments and is marked; a cut in the query
// string changes nothing.
func TestNormaliseCut(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"/users/123/orders/abc", "/users/{id}/orders/{...}"},   // "abc" may be "abcdef..."
		{"/users/123/orders/", "/users/{id}/orders/{...}"},      // the next segment is unknown
		{"/users/123/orders?limit=10&pa", "/users/{id}/orders"}, // cut in the query
		{"/docs#sect", "/docs"},
		{"/averyveryverylongsegmentcut", "/{...}"},
		{"/", "/{...}"},
		{"http://example.com/a/b", "/a/{...}"},
		{"http://example.co", "/{...}"}, // cut inside the authority: no path seen
		{"*", Invalid},                  // "*" is one byte: a cut "*" was something else
		{"users/1", Invalid},
		{"/1/2/3/4/5/6/7/8/9/10/11/12/13/14", "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{...}"},
		{"/1/2/3/4/5/6/7/8/9/10/11/12/1", "/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{id}/{...}"},
		{"/a/{...}/b", "/a/{...}"},
	} {
		got := NormaliseCut(c.in, true)
		if got != c.want {
			t.Errorf("NormaliseCut(%q) = %q, want %q", c.in, got, c.want)
		}
		if again := Normalise(got); again != got {
			t.Errorf("not idempotent: NormaliseCut(%q) = %q, Normalise of it %q", c.in, got, again)
		}
		if b := AppendCut([]byte("x"), c.in, true); string(b) != "x"+c.want {
			t.Errorf("AppendCut(%q) = %q", c.in, b)
		}
		if NormaliseCut(c.in, false) != Normalise(c.in) {
			t.Errorf("NormaliseCut(%q, false) != Normalise", c.in)
		}
	}
	// Distinct long paths cut at the same length never merge with a real, shorter path.
	long := "/api/v1/documents/" + strings.Repeat("section-", 20)
	if got, real := NormaliseCut(long[:160], true), Normalise(long[:160]); got == real || !strings.HasSuffix(got, "/"+Truncated) {
		t.Errorf("cut %q -> %q, same as the uncut %q", long[:160], got, real)
	}
	// A path that fills MaxLen still has room for the marker.
	full := "/" + strings.Repeat("abcdefghij/", 11) + "abcdefghijklmnop"
	if got := NormaliseCut(full, true); len(got) > MaxLen || !strings.HasSuffix(got, "/"+Truncated) {
		t.Errorf("NormaliseCut(%q) = %q (%d bytes)", full, got, len(got))
	}
}

func TestMarkCut(t *testing.T) {
	if got := string(MarkCut([]byte("api.example.com"), true)); got != "api.example.com"+Truncated {
		t.Errorf("MarkCut = %q", got)
	}
	if got := string(MarkCut([]byte("api.example.com"), false)); got != "api.example.com" {
		t.Errorf("MarkCut without a cut = %q", got)
	}
	if Host("a.example", true) != "a.example{...}" || Host("a.example", false) != "a.example" {
		t.Errorf("Host: %q %q", Host("a.example", true), Host("a.example", false))
	}
	buf := make([]byte, 0, 128)
	if allocs := testing.AllocsPerRun(100, func() { buf = MarkCut(append(buf[:0], "h.example"...), true) }); allocs != 0 {
		t.Errorf("MarkCut allocates %v times", allocs)
	}
}
