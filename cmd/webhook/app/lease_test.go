package app

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// term is one elected runnable's term: running while its context lasts.
type term struct {
	active *atomic.Int32
	starts *atomic.Int32
}

func (t term) Start(ctx context.Context) error {
	t.starts.Add(1)
	t.active.Add(1)
	defer t.active.Add(-1)
	<-ctx.Done()
	return nil
}

// TestElectedSurvivesLosingTheLease, against a real API server: of two replicas exactly one
// runs the elected work; when the Lease is taken from it, it stops that work and campaigns
// again instead of ending (controller-runtime's own election would end the process, and with
// it admission and reports); when the holder goes, the other takes over.
func TestElectedSurvivesLosingTheLease(t *testing.T) {
	fixture.Require(t, os.Getenv("KUBEBUILDER_ASSETS") != "", "KUBEBUILDER_ASSETS (a kube-apiserver and etcd) is not set")
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	cs := kubernetes.NewForConfigOrDie(cfg)

	var active, starts atomic.Int32
	run := func(ctx context.Context, wg *sync.WaitGroup) {
		e := &elected{cfg: cfg, namespace: "default", name: "kw-lease-test", log: testr.New(t),
			newRun: func() (manager.Runnable, error) { return term{&active, &starts}, nil }}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.Start(ctx); err != nil {
				t.Errorf("elected.Start: %v", err)
			}
		}()
	}
	var wg sync.WaitGroup
	ctxA, stopA := context.WithCancel(context.Background())
	ctxB, stopB := context.WithCancel(context.Background())
	defer func() { stopA(); stopB(); wg.Wait() }()
	run(ctxA, &wg)
	run(ctxB, &wg)

	wait := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (active %d, starts %d)", what, active.Load(), starts.Load())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	wait("one replica elected", func() bool { return active.Load() == 1 })

	// Someone else takes the Lease (what a stalled API server amounts to for the holder).
	lease, err := cs.CoordinationV1().Leases("default").Get(context.Background(), "kw-lease-test", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other := "someone-else"
	now := metav1.NewMicroTime(time.Now())
	lease.Spec = coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: lease.Spec.LeaseDurationSeconds,
		AcquireTime: &now, RenewTime: &now}
	if _, err := cs.CoordinationV1().Leases("default").Update(context.Background(), lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the holder to stop its work", func() bool { return active.Load() == 0 })
	// Nobody renews someone-else's Lease: once it expires a replica is elected again, with a
	// new term.
	wait("a new term", func() bool { return active.Load() == 1 && starts.Load() == 2 })

	// The holder goes away (releases on cancel): the other one takes over at once.
	stopA()
	stopB()
	wg.Wait()
	if active.Load() != 0 {
		t.Fatalf("%d terms still running after both replicas stopped", active.Load())
	}
}
