package reporter

import (
	"bytes"
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	authnclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
)

// The package's API server, started by the first test that needs it. Its certificates, service
// account signing keys and port live in a fixed directory, so that TestReporterAgainstRealAPIServer
// can stop and start it and every client and token (the manager's, the agents') still fits.
var (
	envOnce sync.Once
	env     *envtest.Environment
	certDir string
	cluster *testCluster
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}
	if certDir != "" {
		_ = os.RemoveAll(certDir)
	}
	os.Exit(code)
}

func requireOrSkip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("KW_REQUIRE_INTEGRATION") == "1" {
		t.Fatalf("KW_REQUIRE_INTEGRATION=1 but %s", why)
	}
	t.Skip(why)
}

// testCluster is the API server with the manager's identity installed.
type testCluster struct {
	cfg   *rest.Config // cluster-admin
	admin *kubernetes.Clientset
	// manager is the manager's identity: a token of its service account, bound to a pod of it,
	// holding the rendered ClusterRole and constrained by the statistics policy.
	manager *rest.Config
}

// startCluster returns the package's API server, started on first use.
func startCluster(t *testing.T) *testCluster {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real API server (-short)")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		requireOrSkip(t, "KUBEBUILDER_ASSETS is not set (hack/k8s-binaries.sh prints the directory)")
	}
	if _, err := exec.LookPath("kubectl"); err != nil {
		requireOrSkip(t, "kubectl not on PATH (config/default is rendered with kubectl kustomize)")
	}
	envOnce.Do(func() { cluster, envErr = newCluster(t) })
	if envErr != nil {
		t.Fatalf("starting envtest: %v", envErr)
	}
	return cluster
}

func newCluster(t *testing.T) (*testCluster, error) {
	dir, err := os.MkdirTemp("", "kw-reporter-envtest-")
	if err != nil {
		return nil, err
	}
	certDir = dir
	e := &envtest.Environment{
		ControlPlane: envtest.ControlPlane{APIServer: &envtest.APIServer{CertDir: dir}},
		// A cold kube-apiserver start on a busy 2-core machine takes far longer than envtest's 20 s.
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	start := time.Now()
	cfg, err := e.Start()
	if err != nil {
		return nil, err
	}
	env = e
	t.Logf("envtest API server up in %v", time.Since(start).Round(time.Millisecond))
	c := &testCluster{cfg: cfg, admin: kubernetes.NewForConfigOrDie(rest.CopyConfig(cfg))}
	c.manager, err = installManagerIdentity(t, c)
	return c, err
}

// installManagerIdentity applies the manager's ServiceAccount, ClusterRole, binding and
// statistics policy exactly as `kubectl kustomize config/default` renders them, and returns a
// config with a real token of that service account, bound to a (never running) pod of it. It
// waits until the policy is in force, so that every write the tests see passed it.
func installManagerIdentity(t *testing.T, c *testCluster) (*rest.Config, error) {
	ctx := context.Background()
	out, err := exec.Command("kubectl", "kustomize", filepath.Join(fixture.RepoRoot(t), "config", "default")).Output()
	if err != nil {
		return nil, fmt.Errorf("kubectl kustomize config/default: %w", err)
	}
	want := map[string]bool{
		"Namespace/kong-watcher-system": true, "ServiceAccount/kong-watcher-webhook": true,
		"ClusterRole/kong-watcher-webhook-role": true, "ClusterRoleBinding/kong-watcher-webhook-rolebinding": true,
		"ValidatingAdmissionPolicy/kong-watcher-manager-statistics-only":        true,
		"ValidatingAdmissionPolicyBinding/kong-watcher-manager-statistics-only": true,
	}
	cl, err := client.New(c.cfg, client.Options{})
	if err != nil {
		return nil, err
	}
	var dep appsv1.Deployment
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if err.Error() == "EOF" {
				break
			}
			return nil, err
		}
		key := u.GetKind() + "/" + u.GetName()
		if key == "Deployment/kong-watcher-webhook" {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &dep); err != nil {
				return nil, err
			}
		}
		if !want[key] {
			continue
		}
		delete(want, key)
		if err := cl.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("creating %s: %w", key, err)
		}
	}
	if len(want) > 0 || dep.Name == "" {
		return nil, fmt.Errorf("config/default does not render %v (or the Deployment)", want)
	}
	// A pod of the manager's Deployment (its namespace enforces the restricted Pod Security
	// Standard, which the template meets).
	const ns = "kong-watcher-system"
	sa := dep.Spec.Template.Spec.ServiceAccountName
	pod, err := c.admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "kong-watcher-webhook-0",
		Labels: dep.Spec.Template.Labels}, Spec: dep.Spec.Template.Spec}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	tok, err := requestToken(ctx, c.admin, ns, sa, pod, nil)
	if err != nil {
		return nil, err
	}
	mc := rest.AnonymousClientConfig(c.cfg)
	mc.BearerToken = tok
	mc.UserAgent = ingest.FieldManager
	manager := kubernetes.NewForConfigOrDie(mc)

	// In force: the manager's label change of a pod of its own is denied (a new value each try:
	// a patch that changes nothing is nothing to deny).
	probe, err := c.admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "policy-probe"},
		Spec: dep.Spec.Template.Spec}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		_, err := manager.CoreV1().Pods(ns).Patch(ctx, probe.Name, types.MergePatchType,
			fmt.Appendf(nil, `{"metadata":{"labels":{"try":"%d"}}}`, i), metav1.PatchOptions{})
		if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "kong-watcher-manager-statistics-only") {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the statistics policy never denied the manager a label change; last result: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return mc, nil
}

// requestToken is a real token of ns/sa (TokenRequest), bound to pod unless pod is nil, for
// audiences (nil: the API server's own).
func requestToken(ctx context.Context, admin kubernetes.Interface, ns, sa string, pod *corev1.Pod, audiences []string) (string, error) {
	exp := int64(3600)
	spec := authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp, Audiences: audiences}
	if pod != nil {
		spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

// agentToken is what the kubelet projects into the agent: a token of the pod's service account,
// bound to the pod, for the manager's audience.
func agentToken(t *testing.T, c *testCluster, pod *corev1.Pod) string {
	t.Helper()
	tok, err := requestToken(t.Context(), c.admin, pod.Namespace, pod.Spec.ServiceAccountName, pod, []string{v1alpha1.ReportAudience})
	if err != nil {
		t.Fatalf("TokenRequest for pod %s: %v", pod.Name, err)
	}
	return tok
}

// countingReviews counts the TokenReviews the manager sends.
type countingReviews struct {
	authnclient.TokenReviewInterface
	n atomic.Int64
}

func (c *countingReviews) Create(ctx context.Context, tr *authenticationv1.TokenReview, o metav1.CreateOptions) (*authenticationv1.TokenReview, error) {
	c.n.Add(1)
	return c.TokenReviewInterface.Create(ctx, tr, o)
}

// statusLog counts the statuses the manager answered.
type statusLog struct {
	mu sync.Mutex
	n  map[int]int
}

func (s *statusLog) add(code int) {
	s.mu.Lock()
	if s.n == nil {
		s.n = map[int]int{}
	}
	s.n[code]++
	s.mu.Unlock()
}

func (s *statusLog) get(code int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[code]
}

func (s *statusLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprint(s.n)
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the connection (the handler sets a read deadline).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// manager is the real report endpoint (ingest.Handler with the real Authenticator and an
// manager's Event recorder, all with the manager's identity) behind TLS, as the webhook server
// serves it at v1alpha1.ReportPath.
type manager struct {
	srv        *httptest.Server
	addr       string
	URL        string
	CA         []byte
	Statuses   *statusLog
	Reviews    *countingReviews
	stopEvents func()
	logs       *logBuf
}

// startManager serves a new Handler on addr ("127.0.0.1:0" for any port; a stopped manager's
// address to restart it where its agents look).
func startManager(t *testing.T, c *testCluster, addr string, mod func(*ingest.Options)) *manager {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(rest.CopyConfig(c.manager))
	m := &manager{Statuses: &statusLog{}, Reviews: &countingReviews{TokenReviewInterface: cs.AuthenticationV1().TokenReviews()}, logs: &logBuf{}}
	rec, stop, err := ingest.NewEventRecorder(c.manager, v1alpha1.AgentContainerName)
	if err != nil {
		t.Fatal(err)
	}
	m.stopEvents = stop
	o := ingest.Options{
		Auth:     ingest.NewAuthenticator(m.Reviews, ingest.DefaultAuthOptions(v1alpha1.ReportAudience)),
		Client:   cs,
		Recorder: rec,
		Log:      funcr.New(m.logs.add, funcr.Options{}),
	}
	if mod != nil {
		mod(&o)
	}
	h := ingest.NewHandler(o)
	mux := http.NewServeMux()
	mux.Handle(v1alpha1.ReportPath, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		m.Statuses.add(sw.code)
	}))
	var ln net.Listener
	for deadline := time.Now().Add(10 * time.Second); ; {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	m.srv = httptest.NewUnstartedServer(mux)
	m.srv.Listener = ln
	m.srv.EnableHTTP2 = true
	m.srv.StartTLS()
	m.addr = ln.Addr().String()
	m.URL = m.srv.URL + v1alpha1.ReportPath
	m.CA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.srv.Certificate().Raw})
	t.Cleanup(m.stop)
	return m
}

// stop shuts the manager down: its port refuses connections until a restart.
func (m *manager) stop() {
	if m.srv != nil {
		m.srv.Close()
		m.srv = nil
		m.stopEvents()
	}
}

// post sends body with token as its bearer; it returns the status and the first line of the
// answer.
func (m *manager) post(t *testing.T, token string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, m.URL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return do(t, m.srv.Client(), req)
}

func do(t *testing.T, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", req.URL, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	line, _, _ := strings.Cut(strings.TrimSpace(b.String()), "\n")
	return resp.StatusCode, line
}

type logBuf struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuf) add(prefix, args string) {
	l.mu.Lock()
	l.lines = append(l.lines, prefix+" "+args)
	l.mu.Unlock()
}

func (l *logBuf) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// agentEvents counts, by reason, the Events about pod recorded as the agent's (source
// component kong-watcher-agent), a repeated one counting as its count.
func agentEvents(t *testing.T, c *testCluster, pod *corev1.Pod) map[string]int {
	t.Helper()
	evs, err := c.admin.CoreV1().Events(pod.Namespace).List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Logf("listing Events: %v", err)
		return nil
	}
	out := map[string]int{}
	for _, e := range evs.Items {
		if e.InvolvedObject.UID != pod.UID || e.Source.Component != v1alpha1.AgentContainerName {
			continue
		}
		out[e.Reason] += int(max(e.Count, 1))
	}
	return out
}
