//go:build e2e

// Package e2e plays the whole kong-watcher story on a real single-node Kubernetes cluster
// (hack/e2e-cluster.sh: etcd, kube-apiserver, controller-manager, scheduler, kubelet,
// kube-proxy, CoreDNS, containerd, bridge CNI) with real pods: install with `kubectl apply -k`,
// label a Kong-like Deployment, send traffic, read the stats with `kubectl describe pod` and
// `kubectl describe deployment`, check that the label was the whole opt-in (Kong's service
// account holds nothing, the manager writes), reload nginx, kill the agent, uninstall; install,
// upgrade and uninstall the same with the Helm chart; check the cluster's DNS and Service
// routing; and label a real Kong 3.8.1 Deployment, whose proxy stats equal its access log.
//
// It runs only with the e2e build tag, from `make e2e`, which starts the cluster and exports
// its env file ($KW_E2E_DIR/env: KUBECONFIG, CONTAINERD_ADDRESS, KW_E2E_NODE_NAME,
// KW_E2E_NODE_IP):
//
//	set -a; . /tmp/kong-watcher-e2e/env; set +a
//	go test -tags e2e -count=1 -v -timeout 30m ./test/e2e
//
// With KW_E2E_WRITE_DOCS=1 (`make e2e-docs`) a run where every step passed writes docs/e2e.md
// (what the run did, the timings, the environment and the `kubectl describe pod` output); a
// plain `make e2e` never changes the tree. KEEP=1 (or KW_E2E_KEEP=1) installs kong-watcher again
// after the uninstall step and rolls the gateway, so that a person finds a monitored Kong in
// the kept cluster.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Names of what the test creates or checks.
const (
	overlayDir   = "test/e2e/overlay"
	manifestsDir = "test/e2e/manifests"

	systemNS       = "kong-watcher-system"
	webhookDeploy  = "kong-watcher-webhook"
	webhookSecret  = "kong-watcher-webhook-cert"
	webhookService = "kong-watcher-webhook-service"
	webhookConfig  = "kong-watcher-mutating-webhook-configuration"

	kongNS          = "kong"
	otherNS         = "kong-e2e-other"
	gatewayDeploy   = "kong-gateway"
	gatewaySelector = "app.kubernetes.io/name=kong-gateway"
	gatewayCtr      = "proxy"
	kongSA          = "kong"

	gatewayImage = "localhost/kong-watcher/gateway:e2e"
	pauseImage   = "localhost/kong-watcher/pause:e2e"
	agentImage   = "localhost/kong-watcher/agent:e2e"

	httpPort  = 8000
	tlsPort   = 8443
	agentPort = 9464
	probePath = "/healthz"

	// statsInterval is the kong-watcher.io/stats-interval annotation of the gateway's pod
	// template (test/e2e/manifests/kong.yaml).
	statsInterval = 5 * time.Second

	// Bounds of the waits.
	waitShort = 90 * time.Second
	waitLong  = 3 * time.Minute
)

// suite is the state the steps share.
type suite struct {
	root       string
	kubeconfig string
	containerd string
	nodeName   string
	nodeIP     string
	cfg        *rest.Config
	cs         *kubernetes.Clientset

	start    time.Time
	steps    []stepResult
	commands []string // the user-visible kubectl commands, in order
	// storyCommands: how many of commands the six steps ran (KEEP's reinstall comes after).
	storyCommands int

	// Set by the steps.
	installed   bool
	gatewayPods []string // the two injected gateway pods, sorted (pod A, pod B)
	agentStart  map[string]time.Time
	// probesAttached: by when each pod's agent had attached its probes (its ProbesAttached
	// Event's second, plus one).
	probesAttached map[string]time.Time
	describe       map[string]string // "after step N" -> kubectl describe pod output
	describePod    string
	// describeDeployment: kubectl describe deployment of the gateway after step 4.
	describeDeployment string
	eventsOut          string
	notes              []string // facts worth writing down (measured latencies, counts)
	env                []envLine
}

type stepResult struct {
	Name     string
	Status   string // PASS, FAIL, SKIP
	Duration time.Duration
	Why      string
}

type envLine struct{ Key, Value string }

type step struct {
	name     string
	requires []int // indexes of the steps that must have passed
	run      func(s *suite, t *testing.T)
}

func TestStory(t *testing.T) {
	s := newSuite(t)
	s.cleanLeftovers(t)
	s.collectEnv(t)

	steps := []step{
		{"1-install", nil, (*suite).stepInstall},
		{"2-label-deployment", []int{0}, (*suite).stepLabel},
		{"3-traffic-stats-events", []int{0, 1}, (*suite).stepTraffic},
		{"4-label-only-identity", []int{0, 1}, (*suite).stepIdentity},
		{"5-reload-and-agent-kill", []int{0, 1}, (*suite).stepResilience},
		{"6-do-no-harm", []int{0, 1}, (*suite).stepDoNoHarm},
		{"7-uninstall", []int{0}, (*suite).stepUninstall},
		{"8-helm-install-upgrade-uninstall", []int{1, 6}, (*suite).stepHelm},
		{"9-cluster-network", nil, (*suite).stepNetwork},
		{"10-real-kong", []int{0}, (*suite).stepRealKong},
	}
	passed := make([]bool, len(steps))
	for i, st := range steps {
		var missing []string
		for _, r := range st.requires {
			if !passed[r] {
				missing = append(missing, steps[r].name)
			}
		}
		begin := time.Now()
		ok := t.Run(st.name, func(t *testing.T) {
			if len(missing) > 0 {
				t.Skipf("skipped: it needs step(s) %s, which did not pass", strings.Join(missing, ", "))
			}
			t.Cleanup(func() {
				if t.Failed() {
					s.dumpState(t)
				}
			})
			st.run(s, t)
		})
		r := stepResult{Name: st.name, Duration: time.Since(begin), Status: "PASS"}
		switch {
		case len(missing) > 0:
			r.Status, r.Why = "SKIP", "needs "+strings.Join(missing, ", ")
		case !ok:
			r.Status = "FAIL"
		}
		passed[i] = ok && len(missing) == 0
		s.steps = append(s.steps, r)
		t.Logf("step %s: %s in %s", st.name, r.Status, r.Duration.Round(100*time.Millisecond))
	}

	s.storyCommands = len(s.commands)
	if keep() && passed[0] {
		t.Run("keep-reinstall", func(t *testing.T) { s.reinstallForExploration(t) })
	}

	total := time.Since(s.start)
	t.Logf("timings:")
	for _, r := range s.steps {
		t.Logf("  %-28s %-4s %8s", r.Name, r.Status, r.Duration.Round(100*time.Millisecond))
	}
	t.Logf("  %-28s      %8s", "total", total.Round(100*time.Millisecond))

	// docs/e2e.md: only when asked (make e2e-docs), and only from a run where every step
	// passed.
	allPassed := !t.Failed()
	for _, r := range s.steps {
		allPassed = allPassed && r.Status == "PASS"
	}
	if os.Getenv("KW_E2E_WRITE_DOCS") == "1" && allPassed {
		if err := s.writeDocs(total); err != nil {
			t.Errorf("writing docs/e2e.md: %v", err)
		} else {
			t.Logf("wrote %s", filepath.Join(s.root, "docs/e2e.md"))
		}
	}
}

func keep() bool { return os.Getenv("KEEP") == "1" || os.Getenv("KW_E2E_KEEP") == "1" }

func newSuite(t *testing.T) *suite {
	t.Helper()
	s := &suite{start: time.Now(), agentStart: map[string]time.Time{}, probesAttached: map[string]time.Time{}, describe: map[string]string{}}
	s.kubeconfig = os.Getenv("KUBECONFIG")
	s.containerd = os.Getenv("CONTAINERD_ADDRESS")
	s.nodeName = os.Getenv("KW_E2E_NODE_NAME")
	s.nodeIP = os.Getenv("KW_E2E_NODE_IP")
	if s.kubeconfig == "" || s.containerd == "" {
		// Not a skip: `make e2e` must fail loudly when it has no cluster.
		t.Fatalf("no cluster: KUBECONFIG=%q CONTAINERD_ADDRESS=%q; start one with `hack/e2e-cluster.sh up` "+
			"and export its env file (set -a; . /tmp/kong-watcher-e2e/env; set +a), or run `make e2e`",
			s.kubeconfig, s.containerd)
	}
	_, file, _, _ := runtime.Caller(0)
	s.root = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	if _, err := os.Stat(filepath.Join(s.root, "go.mod")); err != nil {
		t.Fatalf("cannot find the repository root from %s: %v", file, err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", s.kubeconfig)
	if err != nil {
		t.Fatalf("kubeconfig %s: %v", s.kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	cfg.Timeout = 30 * time.Second
	s.cfg = cfg
	if s.cs, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.cs.Discovery().ServerVersion(); err != nil {
		t.Fatalf("the cluster's API server does not answer (KUBECONFIG=%s): %v", s.kubeconfig, err)
	}
	nodes, err := s.cs.CoreV1().Nodes().List(ctx, listAll)
	if err != nil {
		t.Fatalf("listing nodes: %v", err)
	}
	if len(nodes.Items) == 0 {
		t.Fatal("the cluster has no node")
	}
	return s
}

func (s *suite) note(format string, args ...any) {
	s.notes = append(s.notes, fmt.Sprintf(format, args...))
}
