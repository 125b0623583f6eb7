package envtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"
	"github.com/kong-watcher/kong-watcher/internal/version"
	"github.com/kong-watcher/kong-watcher/webhook/inject"
)

const testAgentImage = "kong-watcher/agent:envtest"

// runningWebhook is one app.Run in the background.
type runningWebhook struct {
	opts   *app.Options
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startWebhook runs the real webhook manager on envtest's local serving port and waits for
// /readyz, which (see cmd/webhook/app) only passes once the certificates are in the cert dir,
// the caBundle is injected and the TLS server answers.
func startWebhook(t *testing.T, cfg *rest.Config, port int, mod func(*app.Options)) *runningWebhook {
	t.Helper()
	o := app.NewOptions()
	o.Namespace = app.DefaultNamespace
	o.WebhookHost = "127.0.0.1"
	o.WebhookPort = port
	o.WebhookCertPath = t.TempDir()
	o.MetricsAddr = "0"
	o.ProbeAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	o.ExtraDNSNames = []string{"localhost"}
	o.Agent.Image = testAgentImage
	if mod != nil {
		mod(o)
	}
	if err := o.Complete(); err != nil {
		t.Fatalf("options: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &runningWebhook{opts: o, cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- app.Run(ctx, cfg, o, logf.Log.WithName("webhook")) }()
	t.Cleanup(func() { w.stop(t) })

	start := time.Now()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case err := <-w.done:
			w.done <- err
			t.Fatalf("webhook exited before it was ready: %v", err)
		case <-deadline:
			t.Fatalf("webhook not ready after 60s (GET http://%s/readyz)", o.ProbeAddr)
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := http.Get("http://" + o.ProbeAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Logf("webhook ready in %v", time.Since(start).Round(time.Millisecond))
				return w
			}
		}
	}
}

// stop cancels the manager and waits for it, so nothing talks to the API server after the
// test (and so envtest can stop).
func (w *runningWebhook) stop(t *testing.T) {
	w.once.Do(func() {
		w.cancel()
		select {
		case err := <-w.done:
			if err != nil {
				t.Errorf("webhook returned: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("webhook did not stop within 30s")
		}
	})
}

// startWebhookProvidedCerts runs the webhook with certificates from elsewhere: envtest's own
// serving pair, whose CA the webhook configuration is set back to trusting (whatever an earlier
// test's rotator wrote; cert-manager's CA injector plays this part in a cluster). A process
// runs one certificate rotator, so every test but TestWebhookWithRotator uses this.
func startWebhookProvidedCerts(t *testing.T, e *envtest.Environment, cfg *rest.Config, mod func(*app.Options)) *runningWebhook {
	t.Helper()
	c := newClient(t, cfg)
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := c.Get(t.Context(), types.NamespacedName{Name: app.DefaultWebhookConfigName}, mwc); err != nil {
		t.Fatal(err)
	}
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].ClientConfig.CABundle = e.WebhookInstallOptions.LocalServingCAData
	}
	if err := c.Update(t.Context(), mwc); err != nil {
		t.Fatal(err)
	}
	return startWebhook(t, cfg, e.WebhookInstallOptions.LocalServingPort, func(o *app.Options) {
		o.DisableCertRotation = true
		o.WebhookCertPath = e.WebhookInstallOptions.LocalServingCertDir
		if mod != nil {
			mod(o)
		}
	})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// kongPod is a Kong-like pod, labelled for injection when inject is true.
func kongPod(ns, name string, inject bool) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "kong"}},
		// What the ServiceAccount admission plugin sets before webhooks run in a real cluster;
		// envtest runs without it, and the agent's projected report token needs an account.
		Spec: corev1.PodSpec{ServiceAccountName: "default", Containers: []corev1.Container{{
			Name:  "proxy",
			Image: "kong:3.9",
			Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 8000}},
		}}},
	}
	if inject {
		p.Labels[kwv1.LabelInject] = kwv1.LabelInjectValue
	}
	return p
}

func agentOf(p *corev1.Pod) (c *corev1.Container, native bool) {
	for i := range p.Spec.InitContainers {
		if p.Spec.InitContainers[i].Name == kwv1.AgentContainerName {
			return &p.Spec.InitContainers[i], true
		}
	}
	for i := range p.Spec.Containers {
		if p.Spec.Containers[i].Name == kwv1.AgentContainerName {
			return &p.Spec.Containers[i], false
		}
	}
	return nil, false
}

// warningRecorder collects the admission warnings the API server relays to the client.
type warningRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningRecorder) HandleWarningHeader(code int, agent, text string) {
	if code != 299 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warningRecorder) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.msgs)
}

// TestWebhookWithRotator: the webhook generates its own CA and certificate, patches the
// caBundle of the MutatingWebhookConfiguration (replacing envtest's, so the API server only
// reaches the webhook if the patch worked), and injects through the real API server.
func TestWebhookWithRotator(t *testing.T) {
	e, cfg := startEnv(t)
	c := newClient(t, cfg)
	ctx := t.Context()
	ensureNamespace(t, c, app.DefaultNamespace)
	w := startWebhook(t, cfg, e.WebhookInstallOptions.LocalServingPort, nil)

	ns := "kong-" + rand.String(5)
	ensureNamespace(t, c, ns)

	secret := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: app.DefaultNamespace, Name: app.DefaultSecretName}, secret); err != nil {
		t.Fatalf("rotator secret: %v", err)
	}
	caPEM := secret.Data["ca.crt"]
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("secret ca.crt is not a PEM certificate: %q", caPEM)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(w.opts.WebhookPort))

	t.Run("certificates generated, written and caBundle patched", func(t *testing.T) {
		for _, k := range []string{"ca.crt", "ca.key", "tls.crt", "tls.key"} {
			if len(secret.Data[k]) == 0 {
				t.Errorf("secret %s has no %s", app.DefaultSecretName, k)
			}
		}
		onDisk, err := os.ReadFile(filepath.Join(w.opts.WebhookCertPath, "tls.crt"))
		if err != nil || !bytes.Equal(onDisk, secret.Data["tls.crt"]) {
			t.Errorf("cert dir tls.crt differs from the secret's (err %v)", err)
		}
		mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
		if err := c.Get(ctx, types.NamespacedName{Name: app.DefaultWebhookConfigName}, mwc); err != nil {
			t.Fatal(err)
		}
		if got := mwc.Webhooks[0].ClientConfig.CABundle; !bytes.Equal(got, caPEM) {
			t.Errorf("caBundle is not the rotator's CA (envtest's was %d bytes, got %d)",
				len(e.WebhookInstallOptions.LocalServingCAData), len(got))
		}
		// The served certificate chains to that CA for the in-cluster Service name.
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: app.DefaultServiceName + "." + app.DefaultNamespace + ".svc"})
		if err != nil {
			t.Fatalf("TLS to the webhook with the rotator's CA: %v", err)
		}
		leaf := conn.ConnectionState().PeerCertificates[0]
		conn.Close()
		if !slices.Contains(leaf.DNSNames, app.DefaultServiceName+"."+app.DefaultNamespace+".svc.cluster.local") {
			t.Errorf("serving cert DNS names = %v", leaf.DNSNames)
		}
		if leaf.NotAfter.Before(time.Now().Add(30 * 24 * time.Hour)) {
			t.Errorf("serving cert expires too soon: %v", leaf.NotAfter)
		}
	})

	t.Run("labelled pod is injected and an Event recorded on its owner", func(t *testing.T) {
		rs := &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kong-gateway-7d9f"},
			Spec: appsv1.ReplicaSetSpec{
				Replicas: new(int32),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "kong"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "kong", kwv1.LabelInject: "true"}},
					Spec:       kongPod(ns, "", true).Spec,
				},
			},
		}
		if err := c.Create(ctx, rs); err != nil {
			t.Fatal(err)
		}
		pod := kongPod(ns, "", true)
		pod.GenerateName = rs.Name + "-"
		yes := true
		pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet",
			Name: rs.Name, UID: rs.UID, Controller: &yes, BlockOwnerDeletion: &yes}}
		if err := c.Create(ctx, pod); err != nil {
			t.Fatalf("creating pod: %v", err)
		}
		checkInjected(t, pod)

		// The Event goes through the events.k8s.io recorder asynchronously.
		deadline := time.Now().Add(20 * time.Second)
		for {
			var evs eventsv1.EventList
			if err := c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
				t.Fatal(err)
			}
			for _, ev := range evs.Items {
				if ev.Reason == kwv1.ReasonInjected && ev.Regarding.Kind == "ReplicaSet" && ev.Regarding.Name == rs.Name {
					if ev.Regarding.UID != rs.UID || ev.Type != corev1.EventTypeNormal || !strings.Contains(ev.Note, pod.GenerateName) {
						t.Errorf("Injected event = %+v", ev)
					}
					t.Logf("event: %s %s/%s: %s", ev.Reason, ev.Regarding.Kind, ev.Regarding.Name, ev.Note)
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no %s Event on ReplicaSet %s after 20s (events: %d)", kwv1.ReasonInjected, rs.Name, len(evs.Items))
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("unlabelled pod is untouched", func(t *testing.T) {
		pod := kongPod(ns, "plain", false)
		if err := c.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		if a, _ := agentOf(pod); a != nil || pod.Annotations[kwv1.AnnotationInjected] != "" || pod.Spec.ShareProcessNamespace != nil {
			t.Errorf("unlabelled pod was mutated: annotations %v, shareProcessNamespace %v, agent %v",
				pod.Annotations, pod.Spec.ShareProcessNamespace, a != nil)
		}
	})

	t.Run("invalid overrides become admission warnings", func(t *testing.T) {
		wcfg := rest.CopyConfig(cfg)
		rec := &warningRecorder{}
		wcfg.WarningHandler = rec
		wc := newClient(t, wcfg)
		pod := kongPod(ns, "bad-overrides", true)
		pod.Annotations = map[string]string{
			kwv1.AnnotationLogLevel:      "loud",
			kwv1.AnnotationStatsInterval: "banana",
		}
		if err := wc.Create(ctx, pod); err != nil {
			t.Fatalf("a pod with invalid overrides must still be created: %v", err)
		}
		a, _ := agentOf(pod)
		if a == nil {
			t.Fatal("pod with invalid overrides not injected")
		}
		env := envMap(a)
		if env[kwv1.EnvLogLevel] != "info" || env[kwv1.EnvStatsInterval] != "30s" {
			t.Errorf("invalid overrides not replaced by defaults: %v", env)
		}
		warnings := rec.all()
		t.Logf("warnings: %q", warnings)
		for _, key := range []string{kwv1.AnnotationLogLevel, kwv1.AnnotationStatsInterval} {
			found := false
			for _, w := range warnings {
				if strings.HasPrefix(w, "kong-watcher: ") && strings.Contains(w, key) {
					found = true
				}
			}
			if !found {
				t.Errorf("no kong-watcher warning about %s in %q", key, warnings)
			}
		}
	})

	t.Run("malformed AdmissionReview over TLS gets HTTP 400", func(t *testing.T) {
		hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
		for _, body := range []string{`{`, `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`} {
			resp, err := hc.Post("https://"+addr+inject.Path, "application/json", strings.NewReader(body))
			if err != nil {
				t.Fatalf("POST over TLS: %v", err)
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("POST %q: HTTP %d %s, want 400", body, resp.StatusCode, msg)
			}
		}
	})

	t.Run("labelled pod is still created when the webhook is down (fail open)", func(t *testing.T) {
		w.stop(t)
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Fatalf("webhook still listening on %s after stop", addr)
		}
		pod := kongPod(ns, "while-down", true)
		start := time.Now()
		if err := c.Create(ctx, pod); err != nil {
			t.Fatalf("pod creation failed with the webhook down (failurePolicy must be Ignore): %v", err)
		}
		if a, _ := agentOf(pod); a != nil {
			t.Errorf("pod has the agent although the webhook is down")
		}
		t.Logf("created without the webhook in %v", time.Since(start).Round(time.Millisecond))
	})
}

// TestWebhookWithProvidedCerts: --disable-cert-rotation (the cert-manager overlay) serves
// the files in --webhook-cert-path as they are; here envtest's own certificate.
func TestWebhookWithProvidedCerts(t *testing.T) {
	e, cfg := startEnv(t)
	c := newClient(t, cfg)
	ctx := t.Context()
	startWebhookProvidedCerts(t, e, cfg, func(o *app.Options) {
		o.Agent.NativeSidecar = false // and the plain-container variant
	})
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	ns := "kong-" + rand.String(5)
	ensureNamespace(t, c, ns)
	pod := kongPod(ns, "kong", true)
	if err := c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	a, native := agentOf(pod)
	if a == nil || native {
		t.Fatalf("want the agent as a plain container (--agent-native-sidecar=false), got agent=%v native=%v", a != nil, native)
	}
	if err := c.Get(ctx, types.NamespacedName{Name: app.DefaultWebhookConfigName}, mwc); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mwc.Webhooks[0].ClientConfig.CABundle, e.WebhookInstallOptions.LocalServingCAData) {
		t.Errorf("caBundle changed although cert rotation is disabled")
	}
}

func envMap(c *corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			m[e.Name] = "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
			continue
		}
		m[e.Name] = e.Value
	}
	return m
}

// checkInjected checks what the API server stored for an injected pod with default settings.
func checkInjected(t *testing.T, pod *corev1.Pod) {
	t.Helper()
	a, native := agentOf(pod)
	if a == nil {
		t.Fatalf("no %s container in the created pod (webhook not called, or caBundle not trusted?)", kwv1.AgentContainerName)
	}
	if !native || a.RestartPolicy == nil || *a.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("agent is not a native sidecar: native=%v restartPolicy=%v", native, a.RestartPolicy)
	}
	if a.Image != testAgentImage {
		t.Errorf("agent image = %q, want %q (from --agent-image)", a.Image, testAgentImage)
	}
	if pod.Spec.ShareProcessNamespace == nil || !*pod.Spec.ShareProcessNamespace {
		t.Errorf("shareProcessNamespace not set")
	}
	if got := pod.Annotations[kwv1.AnnotationInjected]; got != version.Version {
		t.Errorf("annotation %s = %q, want %q", kwv1.AnnotationInjected, got, version.Version)
	}
	sc := a.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatalf("agent has no capabilities: %+v", sc)
	}
	var add []string
	for _, c := range sc.Capabilities.Add {
		add = append(add, string(c))
	}
	slices.Sort(add)
	if fmt.Sprint(add) != "[BPF PERFMON SYS_PTRACE]" {
		t.Errorf("capabilities add = %v, want [BPF PERFMON SYS_PTRACE]", add)
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("capabilities drop = %v, want [ALL]", sc.Capabilities.Drop)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("agent is privileged by default")
	}
	env := envMap(a)
	for k, v := range map[string]string{
		kwv1.EnvPodName:       "fieldRef:metadata.name",
		kwv1.EnvPodNamespace:  "fieldRef:metadata.namespace",
		kwv1.EnvLogLevel:      "info",
		kwv1.EnvProcessName:   "nginx",
		kwv1.EnvStatsInterval: "30s",
		kwv1.EnvMetricsAddr:   ":9464",
	} {
		if env[k] != v {
			t.Errorf("agent env %s = %q, want %q", k, env[k], v)
		}
	}
	if got := a.Resources.Requests[corev1.ResourceCPU]; got.Cmp(resource.MustParse("100m")) != 0 {
		t.Errorf("agent cpu request = %v, want 100m", got.String())
	}
	if got := a.Resources.Limits[corev1.ResourceMemory]; got.Cmp(resource.MustParse("256Mi")) != 0 {
		t.Errorf("agent memory limit = %v, want 256Mi", got.String())
	}
}
