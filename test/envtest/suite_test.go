// Package envtest runs the kong-watcher webhook (the same cmd/webhook/app code the binary
// runs) against a real kube-apiserver and etcd started by controller-runtime's envtest, and
// checks the kustomize manifests in config/.
//
// The API server comes from KUBEBUILDER_ASSETS (hack/k8s-binaries.sh prints the directory).
// Without it the tests that need it skip, unless KW_REQUIRE_INTEGRATION=1 (`make test`), in
// which case they fail: CI must not go green by skipping.
package envtest

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// The shared API server: started by the first test that needs it, stopped by TestMain after
// every test has stopped its own manager (a manager still running while the API server goes
// away hangs envtest's Stop).
var (
	envOnce sync.Once
	env     *envtest.Environment
	envCfg  *rest.Config
	envErr  error
)

func TestMain(m *testing.M) {
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.UseDevMode(true), zap.Level(zapLevel()),
		// cert-controller logs expected start-up races (two writers of the Secret) as errors;
		// stack traces for them only bury the test output.
		zap.StacktraceLevel(zapcore.PanicLevel)))
	code := m.Run()
	if env != nil {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping envtest:", err)
		}
	}
	os.Exit(code)
}

// zapLevel: quiet by default, the manager's info logs with KW_TEST_VERBOSE=1.
func zapLevel() zapcore.Level {
	if os.Getenv("KW_TEST_VERBOSE") != "" {
		return zapcore.InfoLevel
	}
	return zapcore.ErrorLevel
}

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startEnv returns the shared API server, with the MutatingWebhookConfiguration exactly as
// config/default renders it, except that envtest points its clientConfig at a local port
// (service -> url) and sets its own caBundle, which the rotator then replaces.
func startEnv(t *testing.T) (*envtest.Environment, *rest.Config) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real API server (-short)")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fixture.Require(t, false, "KUBEBUILDER_ASSETS is not set (hack/k8s-binaries.sh prints the directory)")
	}
	mwcs := []*admissionregistrationv1.MutatingWebhookConfiguration{renderedMWC(t)}
	envOnce.Do(func() {
		e := &envtest.Environment{
			WebhookInstallOptions: envtest.WebhookInstallOptions{
				MutatingWebhooks: mwcs,
				LocalServingHost: "127.0.0.1",
				// The API server dials https://localhost:<port>; the rotator's certificate
				// carries "localhost" as an extra DNS name (the in-cluster one is the Service).
				LocalServingHostExternalName: "localhost",
			},
			ErrorIfCRDPathMissing: false,
			// envtest's 20 s default is too short for a cold kube-apiserver start on a busy
			// 2-core machine (seen: three timeouts in a row at load 17).
			ControlPlaneStartTimeout: 90 * time.Second,
			ControlPlaneStopTimeout:  30 * time.Second,
		}
		start := time.Now()
		envCfg, envErr = e.Start()
		if envErr == nil {
			env = e
			t.Logf("envtest API server up in %v", time.Since(start).Round(time.Millisecond))
		}
	})
	if envErr != nil {
		t.Fatalf("starting envtest: %v", envErr)
	}
	return env, rest.CopyConfig(envCfg)
}

// renderedMWC is the MutatingWebhookConfiguration of `kubectl kustomize config/default`.
func renderedMWC(t *testing.T) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	kustomize(t, "default").get(t, "MutatingWebhookConfiguration", app.DefaultWebhookConfigName, mwc)
	return mwc
}

func newClient(t *testing.T, cfg *rest.Config) client.Client {
	t.Helper()
	c, err := client.New(cfg, client.Options{Scheme: app.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ensureNamespace(t *testing.T, c client.Client, name string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := c.Create(t.Context(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}
