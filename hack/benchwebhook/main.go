// Command benchwebhook measures the kong-watcher admission webhook's real TLS endpoint.
//
// It runs the webhook exactly as the binary does (cmd/webhook/app: controller-runtime's
// webhook server, the certificate rotator, the Events recorder) against a real
// kube-apiserver + etcd from envtest (KUBEBUILDER_ASSETS), then sends AdmissionReviews for a
// realistic labelled Kong pod straight to https://localhost:<port>/mutate-v1-pod over
// keep-alive connections that trust the rotator's CA:
//
//  1. open loop at a fixed rate (default 200 reviews/s for 20 s): requests are started on a
//     fixed schedule whether or not earlier ones have finished, and latency is measured from
//     the scheduled start, so a stall shows up as latency instead of hiding (no coordinated
//     omission);
//  2. saturation: N closed-loop workers for a few seconds, for the maximum reviews/s.
//
// The API server is not on the measured path (it only hosts the certificate Secret, the
// webhook configuration and the Events); this is the webhook's own cost: TLS, decoding,
// the decision, the patch and the response.
//
// Output ends with `BENCH <name> <value>` lines; -doc rewrites the "## Webhook" section of
// docs/benchmarks.md (other sections are kept).
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"go.uber.org/zap/zapcore"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/yaml"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"
	"github.com/kong-watcher/kong-watcher/hack/internal/benchenv"
	"github.com/kong-watcher/kong-watcher/test/benchkit"
	"github.com/kong-watcher/kong-watcher/webhook/inject"
)

var profilePath string

func main() {
	rate := flag.Int("rate", 200, "open-loop rate, reviews/s")
	dur := flag.Duration("duration", 20*time.Second, "open-loop duration")
	satWorkers := flag.Int("sat-workers", 16, "closed-loop workers for the saturation run")
	satDur := flag.Duration("sat-duration", 8*time.Second, "saturation run duration")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the saturation run here")
	conns := flag.Int("conns", 8, "client connection pool size (the API server also reuses a few keep-alive connections per webhook)")
	doc := flag.String("doc", "", "rewrite the \"## Webhook\" section of this markdown file")
	verbose := flag.Bool("v", false, "webhook logs at info level")
	flag.Parse()

	lvl := zapcore.ErrorLevel
	if *verbose {
		lvl = zapcore.InfoLevel
	}
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(lvl), zap.StacktraceLevel(zapcore.PanicLevel)))

	profilePath = *cpuProfile
	if err := run(*rate, *dur, *satWorkers, *satDur, *conns, *doc); err != nil {
		fmt.Fprintln(os.Stderr, "benchwebhook:", err)
		os.Exit(1)
	}
}

func run(rate int, dur time.Duration, satWorkers int, satDur time.Duration, conns int, doc string) error {
	if err := benchenv.RequireAssets("bench-webhook"); err != nil {
		return err
	}
	port, err := benchkit.FreePort()
	if err != nil {
		return err
	}
	certDir, err := os.MkdirTemp("", "kw-bench-certs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(certDir)
	probePort, err := benchkit.FreePort()
	if err != nil {
		return err
	}
	o := app.NewOptions()
	o.Namespace = app.DefaultNamespace
	o.WebhookHost, o.WebhookPort, o.WebhookCertPath = "127.0.0.1", port, certDir
	o.MetricsAddr, o.ProbeAddr = "0", "127.0.0.1:"+strconv.Itoa(probePort)
	o.ExtraDNSNames = []string{"localhost"}
	o.Agent.Image = "kong-watcher/agent:bench"
	// The webhook's own cost: the admission check (a dry-run create of each injected pod, one
	// API-server round trip that itself calls this webhook again) is a separate, API-server
	// bound cost and is off here.
	o.VerifyInjectedPods = false
	if err := o.Complete(); err != nil {
		return err
	}
	body, err := reviewBody()
	if err != nil {
		return err
	}
	// The handler alone, in this process, without TLS/HTTP/Events: splits the cost. First,
	// before the API server, the webhook server and their goroutines run beside it (the
	// allocations counted are the process's).
	handlerCPU, handlerAllocs, err := handlerOnly(o.Agent, body, 500)
	if err != nil {
		return err
	}
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := renderMWC(mwc); err != nil {
		return err
	}
	env := &envtest.Environment{WebhookInstallOptions: envtest.WebhookInstallOptions{
		MutatingWebhooks:             []*admissionregistrationv1.MutatingWebhookConfiguration{mwc},
		LocalServingHost:             "127.0.0.1",
		LocalServingHostExternalName: "localhost",
		LocalServingPort:             port,
	}}
	cfg, err := benchenv.StartAPIServer(env)
	if err != nil {
		return err
	}
	defer env.Stop() //nolint:errcheck // best effort at exit

	c, err := client.New(cfg, client.Options{Scheme: app.Scheme()})
	if err != nil {
		return err
	}
	ctx := context.Background()
	for _, ns := range []string{app.DefaultNamespace, "kong"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}

	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	t1 := time.Now()
	go func() { done <- app.Run(wctx, cfg, o, logf.Log.WithName("webhook")) }()
	defer func() { cancel(); <-done }()
	if err := waitReady(o.ProbeAddr, done); err != nil {
		return err
	}
	fmt.Printf("webhook ready (certificates generated, caBundle patched) in %v\n", time.Since(t1).Round(time.Millisecond))

	sec := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: o.Namespace, Name: o.SecretName}, sec); err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(sec.Data["ca.crt"]) {
		return errors.New("rotator secret has no CA")
	}
	url := "https://localhost:" + strconv.Itoa(port) + inject.Path
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"},
		// A bounded pool: requests wait for a free connection (and that wait counts in the
		// open-loop latency) instead of opening ever more connections whose TLS handshakes
		// would then compete with the reviews for CPU.
		MaxConnsPerHost:     conns,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     time.Minute,
	}}
	// Sanity: one review, checked in full.
	if err := checkOne(hc, url, body); err != nil {
		return err
	}
	// Warm-up: establish the connections, let the server's pools settle.
	closedLoop(hc, url, body, conns, time.Second)
	openLoop(hc, url, body, rate, 2*time.Second)

	load0 := benchkit.LoadAvg()
	fmt.Printf("open loop: %d reviews/s for %v (load average %s) ...\n", rate, dur, load0)
	cpu0 := benchkit.SelfCPU()
	ol := openLoop(hc, url, body, rate, dur)
	ol.cpuPerReview = (benchkit.SelfCPU() - cpu0) / time.Duration(max(ol.ok, 1))
	fmt.Printf("  sent %d, ok %d, errors %d, achieved %.1f reviews/s, late starts >1ms %d\n",
		ol.sent, ol.ok, ol.errors, ol.achieved, ol.late)
	fmt.Printf("  latency from scheduled start: p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  max %.3f ms\n",
		benchkit.Millis(ol.p(0.50)), benchkit.Millis(ol.p(0.90)), benchkit.Millis(ol.p(0.99)), benchkit.Millis(ol.max()))
	fmt.Printf("  CPU (webhook + load generator, one process) %.0f us per review\n", benchkit.Micros(ol.cpuPerReview))

	fmt.Printf("saturation: %d workers for %v ...\n", satWorkers, satDur)
	if profilePath != "" {
		f, err := os.Create(profilePath)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	cpu0 = benchkit.SelfCPU()
	sat := closedLoop(hc, url, body, satWorkers, satDur)
	if profilePath != "" {
		pprof.StopCPUProfile()
	}
	sat.cpuPerReview = (benchkit.SelfCPU() - cpu0) / time.Duration(max(sat.ok, 1))
	fmt.Printf("  ok %d, errors %d, %.0f reviews/s, p50 %.3f ms  p99 %.3f ms  max %.3f ms, CPU %.0f us per review\n",
		sat.ok, sat.errors, sat.achieved, benchkit.Millis(sat.p(0.50)), benchkit.Millis(sat.p(0.99)), benchkit.Millis(sat.max()), benchkit.Micros(sat.cpuPerReview))

	fmt.Printf("handler alone (no TLS, no HTTP server, no Events): CPU %.0f us per review, %d allocations\n", benchkit.Micros(handlerCPU), handlerAllocs)

	if ol.errors > 0 || sat.errors > 0 {
		fmt.Printf("WARNING: %d + %d failed reviews\n", ol.errors, sat.errors)
	}
	res := summary{
		date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), rate: rate, dur: dur, ol: ol,
		satWorkers: satWorkers, satDur: satDur, sat: sat, bodyLen: len(body),
		cpus: runtime.NumCPU(), load: load0, loadAfter: benchkit.LoadAvg(), conns: conns,
		handlerCPU: handlerCPU, handlerAllocs: handlerAllocs,
	}
	if doc != "" {
		if err := writeDoc(doc, res); err != nil {
			return err
		}
		fmt.Printf("wrote the \"## Webhook\" section of %s\n", doc)
	}
	fmt.Printf("BENCH webhook_open_loop_rate %d\n", rate)
	fmt.Printf("BENCH webhook_open_loop_achieved_per_sec %.1f\n", ol.achieved)
	fmt.Printf("BENCH webhook_errors %d\n", ol.errors+sat.errors)
	fmt.Printf("BENCH webhook_max_ms %.3f\n", benchkit.Millis(ol.max()))
	fmt.Printf("BENCH webhook_cpu_us_per_review %.0f\n", benchkit.Micros(sat.cpuPerReview))
	fmt.Printf("BENCH webhook_handler_cpu_us_per_review %.0f\n", benchkit.Micros(handlerCPU))
	fmt.Printf("BENCH webhook_allocs_per_review %d\n", handlerAllocs)
	fmt.Printf("BENCH webhook_reviews_per_sec %.0f\n", sat.achieved)
	fmt.Printf("BENCH webhook_p50_ms %.3f\n", benchkit.Millis(ol.p(0.50)))
	fmt.Printf("BENCH webhook_p99_ms %.3f\n", benchkit.Millis(ol.p(0.99)))
	return nil
}

// renderMWC takes the MutatingWebhookConfiguration from `kubectl kustomize config/default`,
// so the rotator patches the configuration the product ships.
func renderMWC(out *admissionregistrationv1.MutatingWebhookConfiguration) error {
	docs, err := benchenv.RenderConfigDefault()
	if err != nil {
		return err
	}
	for _, doc := range docs {
		if strings.Contains(doc, "kind: MutatingWebhookConfiguration") {
			return yaml.Unmarshal([]byte(doc), out)
		}
	}
	return errors.New("config/default renders no MutatingWebhookConfiguration")
}

func waitReady(probe string, done <-chan error) error {
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			return fmt.Errorf("webhook exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if resp, err := http.Get("http://" + probe + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return errors.New("webhook not ready after 90s")
}

const uidPlaceholder = "00000000-0000-0000-0000-000000000000"

// reviewBody is an AdmissionReview for a pod of a Kong Deployment as the API server sends
// it: the benchmarks' Kong pod (benchenv.KongPodTemplate), owned by its ReplicaSet.
func reviewBody() ([]byte, error) {
	const hash = "6f7c9d8b5"
	tmpl := benchenv.KongPodTemplate("kong")
	tmpl.Labels["pod-template-hash"] = hash
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	pod.GenerateName, pod.Namespace = "kong-gateway-"+hash+"-", "kong"
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet",
		Name: "kong-gateway-" + hash, UID: "7b0c2a5e-3f0e-4b8e-9d57-0c6a1c5f2e11", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}
	raw, err := json.Marshal(pod)
	if err != nil {
		return nil, err
	}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:         uidPlaceholder,
			Kind:        metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:    metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			RequestKind: &metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Namespace:   "kong",
			Operation:   admissionv1.Create,
			UserInfo: authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:replicaset-controller",
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}},
			Object: k8sruntime.RawExtension{Raw: raw},
			DryRun: ptr.To(false),
		},
	}
	return json.Marshal(review)
}

var uidCounter atomic.Uint64

// withUID gives each review its own uid (the handler echoes it; we check it).
func withUID(body []byte) ([]byte, string) {
	n := uidCounter.Add(1)
	uid := fmt.Sprintf("00000000-0000-0000-0000-%012d", n)
	return bytes.Replace(body, []byte(uidPlaceholder), []byte(uid), 1), uid
}

func send(hc *http.Client, url string, body []byte) error {
	b, uid := withUID(body)
	resp, err := hc.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		return err
	}
	out, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, out)
	}
	if !bytes.Contains(out, []byte(`"uid":"`+uid+`"`)) || !bytes.Contains(out, []byte(`"allowed":true`)) ||
		!bytes.Contains(out, []byte(`"patch":`)) {
		return fmt.Errorf("unexpected response: %.300s", out)
	}
	return nil
}

// checkOne sends one review and checks the patch adds the agent.
func checkOne(hc *http.Client, url string, body []byte) error {
	b, uid := withUID(body)
	resp, err := hc.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("first review: %w", err)
	}
	defer resp.Body.Close()
	var rev admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&rev); err != nil {
		return fmt.Errorf("first review: %w", err)
	}
	if rev.Response == nil || string(rev.Response.UID) != uid || !rev.Response.Allowed ||
		!strings.Contains(string(rev.Response.Patch), kwv1.AgentContainerName) {
		return fmt.Errorf("first review: response does not inject the agent: %+v", rev.Response)
	}
	fmt.Printf("sanity: review of %d bytes -> patch of %d bytes adding %s\n", len(b), len(rev.Response.Patch), kwv1.AgentContainerName)
	return nil
}

// The webhook's targets: the latency an API server waits for at a busy rollout, and the CPU
// and garbage per review that decide it on a loaded node.
const (
	targetP99Ms     = 3.0
	targetHandlerUs = 150
	goalHandlerUs   = 100
	targetAllocs    = 300
)

// handlerOnly calls the injection handler n times in-process and returns the CPU time and
// the allocations per call.
func handlerOnly(cfg inject.Config, body []byte, n int) (time.Duration, uint64, error) {
	h := inject.NewWebhook(cfg, nil, logr.Discard())
	call := func() error {
		req := httptest.NewRequest(http.MethodPost, inject.Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rw := httptest.NewRecorder()
		h.ServeHTTP(rw, req)
		if rw.Code != http.StatusOK {
			return fmt.Errorf("handler: HTTP %d: %s", rw.Code, rw.Body.String())
		}
		return nil
	}
	// Warm: the first calls fill the JSON codecs' type caches and the pools, once per process.
	for range 100 {
		if err := call(); err != nil {
			return 0, 0, err
		}
	}
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	cpu0 := benchkit.SelfCPU()
	for range n {
		if err := call(); err != nil {
			return 0, 0, err
		}
	}
	cpu := (benchkit.SelfCPU() - cpu0) / time.Duration(n)
	runtime.ReadMemStats(&ms1)
	return cpu, (ms1.Mallocs - ms0.Mallocs) / uint64(n), nil
}

type result struct {
	cpuPerReview           time.Duration
	lat                    []time.Duration // sorted
	sent, ok, errors, late int
	achieved               float64
	firstErr               error
}

func (r *result) p(q float64) time.Duration { return benchkit.Percentile(r.lat, q) }

func (r *result) max() time.Duration { return benchkit.Percentile(r.lat, 1) }

// openLoop starts one request every 1/rate s on a fixed schedule.
func openLoop(hc *http.Client, url string, body []byte, rate int, dur time.Duration) *result {
	n := int(float64(rate) * dur.Seconds())
	interval := time.Second / time.Duration(rate)
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	late := 0
	start := time.Now().Add(10 * time.Millisecond)
	for i := range n {
		sched := start.Add(time.Duration(i) * interval)
		if d := time.Until(sched); d > 0 {
			time.Sleep(d)
		} else if -d > time.Millisecond {
			late++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = send(hc, url, body)
			lat[i] = time.Since(sched)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := &result{sent: n, late: late}
	for i := range n {
		if errs[i] != nil {
			r.errors++
			if r.firstErr == nil {
				r.firstErr = errs[i]
			}
			continue
		}
		r.ok++
		r.lat = append(r.lat, lat[i])
	}
	slices.Sort(r.lat)
	r.achieved = float64(r.ok) / elapsed.Seconds()
	if r.firstErr != nil {
		fmt.Println("  first error:", r.firstErr)
	}
	return r
}

// closedLoop runs workers that each send the next review as soon as the last returns.
func closedLoop(hc *http.Client, url string, body []byte, workers int, dur time.Duration) *result {
	var mu sync.Mutex
	r := &result{}
	stop := time.Now().Add(dur)
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			nerr := 0
			var first error
			for time.Now().Before(stop) {
				t := time.Now()
				if err := send(hc, url, body); err != nil {
					nerr++
					if first == nil {
						first = err
					}
					continue
				}
				local = append(local, time.Since(t))
			}
			mu.Lock()
			r.lat = append(r.lat, local...)
			r.errors += nerr
			if r.firstErr == nil {
				r.firstErr = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	r.ok = len(r.lat)
	r.sent = r.ok + r.errors
	slices.Sort(r.lat)
	r.achieved = float64(r.ok) / elapsed.Seconds()
	if r.firstErr != nil {
		fmt.Println("  first error:", r.firstErr)
	}
	return r
}

type summary struct {
	date       string
	rate       int
	dur        time.Duration
	ol         *result
	satWorkers int
	satDur     time.Duration
	sat        *result
	bodyLen    int
	cpus       int
	load       string
	loadAfter  string
	conns      int

	handlerCPU    time.Duration
	handlerAllocs uint64
}

func (s summary) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "## Webhook\n\n")
	fmt.Fprintf(&b, "What: AdmissionReviews for a labelled Kong pod (a Deployment's pod: owner ReplicaSet, Kong's env,\n")
	fmt.Fprintf(&b, "ports, probes, volumes; %d-byte review) sent straight to the webhook's real TLS endpoint\n", s.bodyLen)
	fmt.Fprintf(&b, "(`https://localhost:<port>/mutate-v1-pod`), served by `cmd/webhook/app` exactly as in the binary:\n")
	fmt.Fprintf(&b, "controller-runtime's webhook server, certificates generated by the rotator against a real\n")
	fmt.Fprintf(&b, "kube-apiserver + etcd (envtest), an `Injected` Event per review. Keep-alive HTTP/1.1 client\n")
	fmt.Fprintf(&b, "trusting the rotator's CA, at most %d connections (a request waits for a free one). Every\n", s.conns)
	fmt.Fprintf(&b, "response is checked (HTTP 200, its uid, allowed, a patch). The load generator runs in the same\n")
	fmt.Fprintf(&b, "process, so the CPU per review below is an upper bound for the webhook's own cost.\n\n")
	fmt.Fprintf(&b, "Command: `make bench-webhook` (hack/bench-webhook.sh -> hack/benchwebhook; niceness %d).\n", benchkit.Niceness())
	fmt.Fprintf(&b, "Run: %s, %d CPUs, load average %s before the timed runs and %s after (the machine is shared\n", s.date, s.cpus, s.load, s.loadAfter)
	fmt.Fprintf(&b, "with other work: a load above the CPU count inflates latency; CPU per review is the steadier number).\n\n")
	fmt.Fprintf(&b, "| run | reviews | errors | achieved/s | p50 ms | p90 ms | p99 ms | max ms | CPU us/review |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| open loop, %d/s for %v (latency from the scheduled start) | %d | %d | %.1f | %.3f | %.3f | %.3f | %.3f | %.0f |\n",
		s.rate, s.dur, s.ol.sent, s.ol.errors, s.ol.achieved, benchkit.Millis(s.ol.p(.5)), benchkit.Millis(s.ol.p(.9)), benchkit.Millis(s.ol.p(.99)), benchkit.Millis(s.ol.max()), benchkit.Micros(s.ol.cpuPerReview))
	fmt.Fprintf(&b, "| saturation, %d closed-loop workers for %v | %d | %d | **%.0f** | %.3f | %.3f | %.3f | %.3f | %.0f |\n\n",
		s.satWorkers, s.satDur, s.sat.sent, s.sat.errors, s.sat.achieved, benchkit.Millis(s.sat.p(.5)), benchkit.Millis(s.sat.p(.9)), benchkit.Millis(s.sat.p(.99)), benchkit.Millis(s.sat.max()), benchkit.Micros(s.sat.cpuPerReview))
	fmt.Fprintf(&b, "The injection handler alone (`inject.Webhook.ServeHTTP` called in-process, no TLS, no HTTP\n")
	fmt.Fprintf(&b, "server, no Events; also `go test -bench Handler ./hack/benchwebhook`): %.0f us CPU and %d\n", benchkit.Micros(s.handlerCPU), s.handlerAllocs)
	fmt.Fprintf(&b, "allocations per review.\n\n")
	verdict := func(ok bool) string {
		if ok {
			return "meets"
		}
		return "MISSES"
	}
	p99, cpu := benchkit.Millis(s.ol.p(.99)), benchkit.Micros(s.handlerCPU)
	fmt.Fprintf(&b, "Targets: p99 <= %g ms at 200 reviews/s: %s (p99 %.3f ms); the handler's CPU <= %d us per review (goal %d): %s (%.0f us);\n",
		targetP99Ms, verdict(p99 <= targetP99Ms), p99, targetHandlerUs, goalHandlerUs, verdict(cpu <= targetHandlerUs), cpu)
	fmt.Fprintf(&b, "at most %d allocations per review: %s (%d). The API server gives a webhook\n", targetAllocs, verdict(s.handlerAllocs <= targetAllocs), s.handlerAllocs)
	fmt.Fprintf(&b, "`timeoutSeconds: 5` (config/webhook); the webhook fails open, so even a miss delays, never blocks, a pod.\n")
	return b.String()
}

// writeDoc replaces the "## Webhook" section of path, or appends it.
func writeDoc(path string, s summary) error {
	return benchkit.WriteDocSection(path, "## Webhook", s.markdown())
}
