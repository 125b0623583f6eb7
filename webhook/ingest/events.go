package ingest

import (
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/tools/record"
)

// coreRecorder records core/v1 Events through client-go's record package, behind the
// events.EventRecorder interface the report handler and the rollup use. The agents' Events and
// the workloads' are periodic summaries whose messages differ every time (TrafficStats, alerts
// quoting numbers): the events.k8s.io recorder folds Events of one reason into a series that
// keeps the first message for up to 30 minutes, while core/v1's correlator records each new
// message (repeats of one message become a count; more than 10 similar ones in 10 minutes are
// combined), so `kubectl describe` shows the latest numbers.
type coreRecorder struct{ rec record.EventRecorder }

func (c coreRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	c.rec.Eventf(regarding, eventtype, reason, note, args...)
}

// NewEventRecorder records Events as component (coreRecorder); stop ends its broadcaster. The spam filter
// keys on the reason too, so a burst of one kind cannot starve another (an alert).
func NewEventRecorder(cfg *rest.Config, component string) (events.EventRecorder, func(), error) {
	cs, err := kubernetes.NewForConfig(rest.CopyConfig(cfg))
	if err != nil {
		return nil, nil, fmt.Errorf("creating the event client: %w", err)
	}
	b := record.NewBroadcaster(record.WithCorrelatorOptions(record.CorrelatorOptions{
		SpamKeyFunc: func(e *corev1.Event) string {
			return strings.Join([]string{e.Source.Component, e.InvolvedObject.Namespace, e.InvolvedObject.Name,
				string(e.InvolvedObject.UID), e.Type, e.Reason}, "/")
		},
	}))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	host, _ := os.Hostname()
	return coreRecorder{b.NewRecorder(clientgoscheme.Scheme, corev1.EventSource{Component: component, Host: host})}, b.Shutdown, nil
}
