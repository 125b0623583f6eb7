package app

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// elected runs what newRun builds only while this replica holds the Lease, and campaigns again
// when it loses it. controller-runtime's own leader election ends the whole process when the
// lease is lost (an API server that stalls for a renew deadline is enough), and with it this
// replica's admission webhook and report endpoint; losing the right to combine workload stats
// must cost nothing but that. A new runnable is built for each term: informers cannot be
// started twice.
type elected struct {
	cfg       *rest.Config
	namespace string
	name      string
	newRun    func() (manager.Runnable, error)
	log       logr.Logger
}

// NeedLeaderElection is false: the elected runnable holds its own Lease.
func (e *elected) NeedLeaderElection() bool { return false }

func (e *elected) Start(ctx context.Context) error {
	cs, err := kubernetes.NewForConfig(rest.CopyConfig(e.cfg))
	if err != nil {
		return fmt.Errorf("lease client: %w", err)
	}
	host, _ := os.Hostname()
	id := host + "_" + string(uuid.NewUUID())
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: e.namespace, Name: e.name},
		Client:     cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			ReleaseOnCancel: true,
			Name:            e.name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) {
					e.log.Info("elected: combining the workloads' stats", "lease", e.namespace+"/"+e.name, "identity", id)
					r, err := e.newRun()
					if err != nil {
						e.log.Error(err, "cannot start the elected work")
						return
					}
					if err := r.Start(lctx); err != nil {
						e.log.Error(err, "the elected work stopped")
					}
				},
				OnStoppedLeading: func() {
					if ctx.Err() == nil {
						e.log.Info("lost the lease: the elected work stops; campaigning again", "lease", e.namespace+"/"+e.name)
					}
				},
			},
		})
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		le.Run(ctx) // returns when the lease is lost or ctx is done
	}
	return nil
}
