// Package rollup writes the combined statistics of a workload's pods on the workload itself, so
// that `kubectl describe deployment kong` answers "how is my gateway doing" without visiting
// every pod. It runs in the manager, on the leader only.
//
// Every Interval, for every Deployment, StatefulSet and DaemonSet that has pods labelled
// kong-watcher.io/inject=true carrying a kong-watcher.io/stats annotation, it parses those
// annotations, merges them (aggregate.Merge: counts summed, percentiles recomputed from the
// merged histograms, rows re-ranked) and merge-patches the workload's kong-watcher.io/*
// statistics annotations (v1alpha1.ReportedAnnotations only) with the result and
// kong-watcher.io/pods ("3 of 3 pods reporting"). It records TrafficStats, HighErrorRate,
// HighLatency and their *Resolved Events on the workload, judged on the merged window.
//
// What the numbers mean for a workload:
//
//   - total is the sum of the totals of the workload's pods that exist now, each since its
//     own agent started. A pod that is replaced (a rollout, an eviction, a scale-down) takes
//     its counts with it, so total can go down; it is not the workload's lifetime count.
//     since is the earliest start among the current pods.
//   - window is the union of the current pods' last stats windows: each pod's last interval,
//     which end at about the same time but are not aligned. Its requests and percentiles
//     cover those windows together; its rate is the sum of the pods' rates. A pod whose
//     stats have not been updated for 3 of its windows (and at least 2 rollup intervals) is
//     taken to have stopped reporting: its total still counts, its window does not.
//   - kong-watcher.io/pods says how many pods' windows are in it, of the pods the workload
//     controller counts (a Deployment's or StatefulSet's status.replicas, a DaemonSet's
//     status.currentNumberScheduled): pods started without the agent, or whose stats are
//     stale or malformed, make the difference.
//   - A workload none of whose pods has stats keeps the annotations last written.
//
// Thresholds for the alerts come from the workload's pod template annotations
// kong-watcher.io/high-error-rate-threshold and kong-watcher.io/high-latency-p99-ms, else
// from Options. Alert state lives in memory: a new leader starts with no alert open, so an
// ongoing episode can be announced once more after a fail-over.
//
// Cost: pods and ReplicaSets are watched as metadata only, selected by the inject label (the
// Deployment controller copies the pod template's labels to its ReplicaSets), and the cache
// keeps only each pod's name, owner and stats annotation (up to 16 KiB). Each interval does
// one GET per workload with reporting pods (the pod template's thresholds, the replica count
// and the annotations in place) and a PATCH only when something other than the updated and
// period fields changed. A pod with a malformed annotation is skipped, with a log line per
// pod and distinct error.
package rollup

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// FieldManager is the field manager of the workload patches.
const FieldManager = "kong-watcher-manager"

// Defaults.
const (
	DefaultInterval             = 30 * time.Second
	DefaultTrafficStatsInterval = 5 * time.Minute
	// The alert defaults are the agent's: a workload alerts where its pods would.
	DefaultErrorRateThreshold = kube.DefaultErrorRateThreshold
	DefaultLatencyP99Ms       = kube.DefaultLatencyP99Ms
	DefaultMinRequests        = kube.DefaultMinRequests
	DefaultRequestTimeout     = 10 * time.Second
)

// Options configure a Rollup; zero values take the defaults.
type Options struct {
	// Interval is how often the workloads' annotations are recomputed and the alerts judged.
	Interval time.Duration
	// TrafficStatsInterval is how often a TrafficStats Event is recorded on a workload (the
	// first one as soon as the merged window holds MinRequests requests); negative: never.
	TrafficStatsInterval time.Duration
	// ErrorRateThreshold (a fraction: 0.05 = 5%) and LatencyP99Ms are the alert thresholds
	// where the pod template has no kong-watcher.io/high-error-rate-threshold or
	// kong-watcher.io/high-latency-p99-ms annotation; a window of fewer than MinRequests
	// requests raises nothing.
	ErrorRateThreshold float64
	LatencyP99Ms       float64
	MinRequests        uint64
	// MaxStatsJSON bounds the workload's kong-watcher.io/stats annotation (report.StatsJSON;
	// <= 0: report.DefaultMaxStatsJSON).
	MaxStatsJSON int
	// MaxRows bounds the merged host and path rows (aggregate.DefaultMaxRows).
	MaxRows int
	// Namespace limits the rollup to one namespace; "" is all.
	Namespace string
	// RequestTimeout bounds each API call.
	RequestTimeout time.Duration
	// Now is the clock (time.Now); tests set it.
	Now func() time.Time
	Log logr.Logger
}

// Rollup is the manager.Runnable; see the package documentation.
type Rollup struct {
	o        Options
	log      logr.Logger
	rec      events.EventRecorder
	apps     kubernetes.Interface
	pods     cache.SharedIndexInformer
	replicas cache.SharedIndexInformer

	// Touched by Start's goroutine only.
	states    map[workloadRef]*state
	malformed map[types.UID]string // the last error logged per pod
	logBudget int                  // malformed-pod lines left in this tick
	unlogged  int                  // malformed pods not logged in this tick
}

// maxMalformedLogs bounds the malformed-pod log lines per tick; the others wait their turn.
const maxMalformedLogs = 10

var (
	_ manager.Runnable               = (*Rollup)(nil)
	_ manager.LeaderElectionRunnable = (*Rollup)(nil)
)

// New builds a Rollup from the manager's configuration (mgr.GetConfig()) and an Event recorder
// (mgr.GetEventRecorder(name)). It makes no API call; Start does.
func New(cfg *rest.Config, rec events.EventRecorder, o Options) (*Rollup, error) {
	if cfg == nil || rec == nil {
		return nil, errors.New("rollup: a rest.Config and an EventRecorder are required")
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = FieldManager + "/rollup"
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("rollup: metadata client: %w", err)
	}
	// Workloads are read whole (their pod template), so in protobuf, which costs less to decode.
	pcfg := rest.CopyConfig(cfg)
	pcfg.ContentType = "application/vnd.kubernetes.protobuf"
	pcfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	apps, err := kubernetes.NewForConfig(pcfg)
	if err != nil {
		return nil, fmt.Errorf("rollup: client: %w", err)
	}
	return newRollup(apps, meta, rec, o)
}

func newRollup(apps kubernetes.Interface, meta metadata.Interface, rec events.EventRecorder, o Options) (*Rollup, error) {
	orDefault(&o.Interval, DefaultInterval)
	if o.TrafficStatsInterval == 0 { // negative: off
		o.TrafficStatsInterval = DefaultTrafficStatsInterval
	}
	orDefault(&o.ErrorRateThreshold, DefaultErrorRateThreshold)
	orDefault(&o.LatencyP99Ms, DefaultLatencyP99Ms)
	orDefault(&o.MinRequests, DefaultMinRequests)
	orDefault(&o.RequestTimeout, DefaultRequestTimeout)
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Rollup{o: o, log: o.Log, rec: rec, apps: apps,
		states: map[workloadRef]*state{}, malformed: map[types.UID]string{}}
	labelled := func(lo *metav1.ListOptions) {
		lo.LabelSelector = v1alpha1.LabelInject + "=" + v1alpha1.LabelInjectValue
	}
	r.pods = metadatainformer.NewFilteredMetadataInformer(meta, schema.GroupVersionResource{Version: "v1", Resource: "pods"},
		o.Namespace, 0, cache.Indexers{}, labelled).Informer()
	r.replicas = metadatainformer.NewFilteredMetadataInformer(meta, appsv1.SchemeGroupVersion.WithResource("replicasets"),
		o.Namespace, 0, cache.Indexers{}, labelled).Informer()
	if err := r.pods.SetTransform(trim(v1alpha1.AnnotationStats, maxPodStatsJSON)); err != nil {
		return nil, err
	}
	if err := r.replicas.SetTransform(trim("", 0)); err != nil {
		return nil, err
	}
	return r, nil
}

func orDefault[T cmp.Ordered](v *T, def T) {
	var zero T
	if *v <= zero {
		*v = def
	}
}

// NeedLeaderElection is true: one writer per workload.
func (r *Rollup) NeedLeaderElection() bool { return true }

// Start watches and rolls up until ctx is done.
func (r *Rollup) Start(ctx context.Context) error {
	if !r.watch(ctx) {
		return nil // ctx is done
	}
	r.log.Info("rolling up the pods' stats onto their workloads", "interval", r.o.Interval, "namespace", r.o.Namespace)
	ticker := time.NewTicker(r.o.Interval)
	defer ticker.Stop()
	for {
		r.tick(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

// watch starts the pod and ReplicaSet informers and waits for their caches; false: ctx ended
// first.
func (r *Rollup) watch(ctx context.Context) bool {
	go r.pods.RunWithContext(ctx)
	go r.replicas.RunWithContext(ctx)
	return cache.WaitForCacheSync(ctx.Done(), r.pods.HasSynced, r.replicas.HasSynced)
}

// maxPodStatsJSON bounds a pod's kong-watcher.io/stats annotation as the manager writes it
// (report.StatsJSON with ingest's default bound). A longer one was written by someone else:
// anyone who can create labelled pods could otherwise park up to 256 KiB per pod in the cache.
const maxPodStatsJSON = report.DefaultMaxStatsJSON

// trim keeps what the rollup reads of a pod or ReplicaSet: name, namespace, UID, controller
// reference, and the annotation keep (none for ""), emptied when longer than maxLen bytes (the
// pod is then skipped as malformed). Managed fields, labels and the other annotations would
// only cost memory.
func trim(keep string, maxLen int) cache.TransformFunc {
	return func(obj any) (any, error) {
		m, ok := obj.(*metav1.PartialObjectMetadata)
		if !ok {
			return obj, nil
		}
		out := &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{
			Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}}
		if ref := metav1.GetControllerOfNoCopy(m); ref != nil {
			out.OwnerReferences = []metav1.OwnerReference{*ref}
		}
		if v, ok := m.Annotations[keep]; ok && keep != "" {
			if len(v) > maxLen {
				v = ""
			}
			out.Annotations = map[string]string{keep: v}
		}
		return out, nil
	}
}

// workloadRef names a workload; UID tells a re-created one from the one its pods belong to.
type workloadRef struct {
	Kind, Namespace, Name string
	UID                   types.UID
}

// workloadOf maps a pod to its workload: a Deployment through its ReplicaSet's controller, a
// StatefulSet or DaemonSet directly. Anything else (a bare ReplicaSet, a Job, no controller)
// is not a workload the rollup writes to.
func (r *Rollup) workloadOf(pod *metav1.PartialObjectMetadata) (workloadRef, bool) {
	ref := metav1.GetControllerOfNoCopy(pod)
	if ref == nil || !isApps(ref.APIVersion) {
		return workloadRef{}, false
	}
	switch ref.Kind {
	case "StatefulSet", "DaemonSet":
		return workloadRef{ref.Kind, pod.Namespace, ref.Name, ref.UID}, true
	case "ReplicaSet":
		obj, ok, _ := r.replicas.GetIndexer().GetByKey(pod.Namespace + "/" + ref.Name)
		if !ok {
			return workloadRef{}, false
		}
		rs := obj.(*metav1.PartialObjectMetadata)
		owner := metav1.GetControllerOfNoCopy(rs)
		if rs.UID != ref.UID || owner == nil || owner.Kind != "Deployment" || !isApps(owner.APIVersion) {
			return workloadRef{}, false
		}
		return workloadRef{"Deployment", pod.Namespace, owner.Name, owner.UID}, true
	}
	return workloadRef{}, false
}

func isApps(apiVersion string) bool {
	gv, err := schema.ParseGroupVersion(apiVersion)
	return err == nil && gv.Group == appsv1.GroupName
}

// tick does one round over every workload with reporting pods.
func (r *Rollup) tick(ctx context.Context) {
	now := r.o.Now()
	r.logBudget, r.unlogged = maxMalformedLogs, 0
	defer func() {
		if r.unlogged > 0 {
			r.log.Info("more pods have a malformed stats annotation; they are skipped and logged in later intervals", "pods", r.unlogged)
		}
	}()
	groups := map[workloadRef][]*metav1.PartialObjectMetadata{}
	seenPods := map[types.UID]bool{}
	for _, obj := range r.pods.GetStore().List() {
		pod := obj.(*metav1.PartialObjectMetadata)
		if _, ok := pod.Annotations[v1alpha1.AnnotationStats]; !ok {
			continue
		}
		if w, ok := r.workloadOf(pod); ok {
			groups[w] = append(groups[w], pod)
			seenPods[pod.UID] = true
		}
	}
	for uid := range r.malformed {
		if !seenPods[uid] {
			delete(r.malformed, uid)
		}
	}
	for w := range r.states {
		if _, ok := groups[w]; !ok {
			delete(r.states, w)
		}
	}
	refs := slices.SortedFunc(maps.Keys(groups), func(a, b workloadRef) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	for _, w := range refs {
		if ctx.Err() != nil {
			return
		}
		r.rollup(ctx, w, groups[w], now)
	}
}

// state is what the rollup remembers of a workload between ticks: its alerts, and what it
// logged last.
type state struct {
	errorAlert   bool
	latencyAlert bool
	sawTraffic   bool
	lastTraffic  time.Time
	badThreshold string
	lastErr      string
}

// failed logs err unless it is the error logged last for this workload.
func (st *state) failed(log logr.Logger, msg string, err error) {
	if e := err.Error(); e != st.lastErr {
		st.lastErr = e
		log.Info(msg, "error", e)
	}
}

// rollup merges one workload's pods' stats and writes them.
func (r *Rollup) rollup(ctx context.Context, w workloadRef, pods []*metav1.PartialObjectMetadata, now time.Time) {
	log := r.log.WithValues("workload", w.Kind+"/"+w.Namespace+"/"+w.Name)
	docs := make([]v1alpha1.Stats, 0, len(pods))
	for _, p := range pods {
		v := p.Annotations[v1alpha1.AnnotationStats]
		s, err := aggregate.ParseStats(v)
		if v == "" {
			err = fmt.Errorf("empty, or longer than the %d bytes the manager writes", maxPodStatsJSON)
		}
		if err != nil {
			r.skipMalformed(log, p, err)
			continue
		}
		delete(r.malformed, p.UID)
		docs = append(docs, s)
	}
	if len(docs) == 0 {
		return
	}
	merged, fresh := combine(docs, now, r.o.Interval, r.o.MaxRows)

	st := r.states[w]
	if st == nil {
		st = &state{lastTraffic: now}
		r.states[w] = st
	}
	wl, err := r.get(ctx, w)
	if err != nil {
		if !apierrors.IsNotFound(err) && !errors.Is(err, errNotOurs) {
			st.failed(log, "cannot read the workload; retrying every interval", err)
		}
		return
	}
	reporting := podsReporting(fresh, max(int(wl.replicas), len(docs)))
	ann := report.Annotations(merged, r.o.MaxStatsJSON)
	ann[v1alpha1.AnnotationPods] = reporting
	if sameReport(wl.annotations, ann) {
		st.lastErr = ""
	} else if err := r.patch(ctx, w, PatchFor(wl.annotations, ann)); err != nil {
		st.failed(log, "cannot patch the workload's annotations; retrying every interval", err)
	} else {
		st.lastErr = ""
	}
	th, bad := r.thresholds(wl.template)
	if bad != st.badThreshold {
		st.badThreshold = bad
		if bad != "" {
			log.Info("ignoring an invalid alert threshold annotation on the pod template", "error", bad)
		}
	}
	r.evaluate(st, w, merged, th, reporting, now)
}

// skipMalformed logs a pod whose stats do not parse, once per distinct error.
func (r *Rollup) skipMalformed(log logr.Logger, p *metav1.PartialObjectMetadata, err error) {
	msg := err.Error()
	switch {
	case r.malformed[p.UID] == msg:
	case r.logBudget == 0:
		r.unlogged++
	default:
		r.logBudget--
		r.malformed[p.UID] = msg
		log.Info("skipping a pod whose stats annotation is malformed", "pod", p.Name, "error", msg)
	}
}

// combine merges the pods' stats, leaving out the window of each pod whose stats are stale:
// not updated for 3 of its windows and at least 2 intervals. fresh counts the others.
func combine(docs []v1alpha1.Stats, now time.Time, interval time.Duration, maxRows int) (merged v1alpha1.Stats, fresh int) {
	for i := range docs {
		d := &docs[i]
		staleAfter := max(3*seconds(d.Window.PeriodSeconds), 2*interval)
		if now.Sub(d.Updated) > staleAfter {
			d.Window = v1alpha1.Summary{}
			continue
		}
		fresh++
	}
	return aggregate.Merge(docs, aggregate.MergeOptions{MaxRows: maxRows}), fresh
}

func seconds(s float64) time.Duration {
	return time.Duration(min(s, float64(24*time.Hour/time.Second)) * float64(time.Second))
}

func podsReporting(fresh, of int) string {
	return strconv.Itoa(fresh) + " of " + strconv.Itoa(of) + " pods reporting"
}

// sameReport tells whether the workload's annotations (live) already say what want says,
// apart from the fields of the Stats JSON that move at every report: updated, the periods and
// the total's rate (the pods' totals' periods grow all the time).
func sameReport(live, want map[string]string) bool {
	for _, k := range v1alpha1.ReportedAnnotations {
		l, lok := live[k]
		w, wok := want[k]
		if lok != wok || l != w && (k != v1alpha1.AnnotationStats || steady(l) != steady(w)) {
			return false
		}
	}
	return true
}

// steady is a Stats JSON without its moving fields ("" when it does not parse).
func steady(statsJSON string) string {
	var s v1alpha1.Stats
	if json.Unmarshal([]byte(statsJSON), &s) != nil {
		return ""
	}
	s.Updated = time.Time{}
	s.Total.PeriodSeconds, s.Total.RequestsPerSecond, s.Window.PeriodSeconds = 0, 0, 0
	b, _ := json.Marshal(s)
	return string(b)
}
