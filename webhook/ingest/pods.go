package ingest

import (
	"context"
	"net/http"
	"strings"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// admit reads the pod a newly verified token is bound to and lets it report only if the webhook
// injected it: any pod can get a token for the report audience, and without this check the
// manager would write kong-watcher.io/* annotations and agent Events on whichever pod asked.
// It also reads the agent's stats interval, which paces the pod's reports (allow).
func (h *Handler) admit(ctx context.Context, id *Identity) error {
	who := id.Namespace + "/" + id.Pod
	pod, err := h.o.Client.CoreV1().Pods(id.Namespace).Get(ctx, id.Pod, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err) || err == nil && pod.UID != id.PodUID:
		// Deleted since the TokenReview (or replaced by a pod of the same name).
		return refused(http.StatusGone, "pod %s (uid %s) no longer exists", who, id.PodUID)
	case err != nil:
		return refused(http.StatusServiceUnavailable, "cannot read pod %s from the API server: %v", who, err)
	}
	if !isAgentPod(pod) {
		return refused(http.StatusForbidden, "pod %s is not a kong-watcher agent pod: it has neither the %s annotation nor a %s container",
			who, v1alpha1.AnnotationInjected, v1alpha1.AgentContainerName)
	}
	id.ReportInterval = reportInterval(pod)
	return nil
}

// isAgentPod: the webhook injected the pod (its annotation), or the pod carries the agent as a
// container or an init container (native sidecar), as the webhook treats it too.
func isAgentPod(pod *corev1.Pod) bool {
	if _, ok := pod.Annotations[v1alpha1.AnnotationInjected]; ok {
		return true
	}
	return agentContainer(pod) != nil
}

func agentContainer(pod *corev1.Pod) *corev1.Container {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range cs {
			if cs[i].Name == v1alpha1.AgentContainerName {
				return &cs[i]
			}
		}
	}
	return nil
}

// defaultReportInterval is the agent's default STATS_INTERVAL.
var defaultReportInterval = func() time.Duration {
	d, err := time.ParseDuration(v1alpha1.DefaultStatsInterval)
	if err != nil {
		panic("ingest: v1alpha1.DefaultStatsInterval: " + err.Error())
	}
	return d
}()

// reportInterval is the agent's STATS_INTERVAL: its container's variable as the webhook sets it,
// else the pod's kong-watcher.io/stats-interval annotation, else the default; a value the agent
// would refuse (outside 1s to 1h) counts as the default. (The agent's own parser, in
// api/agentenv, is not imported: it would make agent/kube's tests, which use this package, an
// import cycle.)
func reportInterval(pod *corev1.Pod) time.Duration {
	v := pod.Annotations[v1alpha1.AnnotationStatsInterval]
	if c := agentContainer(pod); c != nil {
		for _, e := range c.Env {
			if e.Name == v1alpha1.EnvStatsInterval && e.ValueFrom == nil {
				v = e.Value
			}
		}
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < time.Second || d > time.Hour {
		return defaultReportInterval
	}
	return d
}

// reportPeriod is the pace a pod's reports are held to: one every half stats interval, twice
// what its agent sends (a report per window, plus the Events it queues in between), and never
// slower than half the default interval, so an agent with a long interval is not held back.
func reportPeriod(id Identity) time.Duration {
	iv := id.ReportInterval
	if iv <= 0 {
		iv = defaultReportInterval
	}
	return min(iv, defaultReportInterval) / 2
}

// limiterIdleTTL is how long an idle pod's limiter is remembered: at least as long as its bucket
// takes to fill again, after which a new limiter is the same as the old.
func limiterIdleTTL(burst int) time.Duration {
	return max(10*time.Minute, time.Duration(burst)*defaultReportInterval/2)
}

// allow takes one report from the pod's token bucket; when it is empty it says how long until
// the next report is allowed. Each report is a pod PATCH with the manager's API budget, shared
// with the TokenReviews: one pod posting back to back must not starve the others.
func (h *Handler) allow(id Identity) (time.Duration, bool) {
	now := h.now()
	lim := h.limiters.get(id.PodUID, func() *rate.Limiter {
		return rate.NewLimiter(rate.Every(reportPeriod(id)), h.o.PodReportBurst)
	})
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}
