package rollup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// workload is what the rollup reads of a workload.
type workload struct {
	annotations map[string]string // its own
	template    map[string]string // its pod template's
	replicas    int32             // the pods its controller counts
}

// get reads the workload; a workload re-created under the same name (another UID) is not the
// one the pods belong to, and counts as not found.
func (r *Rollup) get(ctx context.Context, w workloadRef) (*workload, error) {
	ctx, cancel := context.WithTimeout(ctx, r.o.RequestTimeout)
	defer cancel()
	apps := r.apps.AppsV1()
	var meta *metav1.ObjectMeta
	var out workload
	switch w.Kind {
	case "Deployment":
		d, err := apps.Deployments(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		meta, out.template, out.replicas = &d.ObjectMeta, d.Spec.Template.Annotations, d.Status.Replicas
	case "StatefulSet":
		s, err := apps.StatefulSets(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		meta, out.template, out.replicas = &s.ObjectMeta, s.Spec.Template.Annotations, s.Status.Replicas
	case "DaemonSet":
		d, err := apps.DaemonSets(w.Namespace).Get(ctx, w.Name, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		meta, out.template, out.replicas = &d.ObjectMeta, d.Spec.Template.Annotations, d.Status.CurrentNumberScheduled
	default:
		return nil, fmt.Errorf("unsupported workload kind %s", w.Kind)
	}
	if meta.UID != w.UID {
		return nil, errNotOurs
	}
	out.annotations = meta.Annotations
	return &out, nil
}

var errNotOurs = errors.New("the workload was re-created: its pods belong to the previous one")

// patch applies a JSON merge patch to the workload.
func (r *Rollup) patch(ctx context.Context, w workloadRef, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, r.o.RequestTimeout)
	defer cancel()
	apps := r.apps.AppsV1()
	switch w.Kind {
	case "Deployment":
		return mergePatch(ctx, apps.Deployments(w.Namespace), w.Name, body)
	case "StatefulSet":
		return mergePatch(ctx, apps.StatefulSets(w.Namespace), w.Name, body)
	case "DaemonSet":
		return mergePatch(ctx, apps.DaemonSets(w.Namespace), w.Name, body)
	}
	return fmt.Errorf("unsupported workload kind %s", w.Kind)
}

// patcher is the Patch of a typed client (DeploymentInterface and the like).
type patcher[T any] interface {
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (T, error)
}

func mergePatch[T any](ctx context.Context, c patcher[T], name string, body []byte) error {
	_, err := c.Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{FieldManager: FieldManager})
	return err
}

// PatchFor is the JSON merge patch that moves the workload's statistics annotations from
// live to want: the keys of v1alpha1.ReportedAnnotations that differ set, those want lacks
// removed, and no other key, label or field mentioned.
func PatchFor(live, want map[string]string) []byte {
	ann := map[string]any{}
	for _, k := range v1alpha1.ReportedAnnotations {
		v, ok := want[k]
		old, had := live[k]
		switch {
		case ok && (!had || old != v):
			ann[k] = v
		case !ok && had:
			ann[k] = nil
		}
	}
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	return b
}

// thresholds are the alert thresholds for one workload.
type thresholds struct {
	errorRate    float64
	latencyP99Ms float64
	minRequests  uint64
}

// thresholds returns the Options' thresholds overridden by the pod template's annotations, and
// what was wrong with an invalid one ("" when none).
func (r *Rollup) thresholds(template map[string]string) (thresholds, string) {
	t := thresholds{r.o.ErrorRateThreshold, r.o.LatencyP99Ms, r.o.MinRequests}
	var bad []string
	if v, ok := template[v1alpha1.AnnotationHighErrorRateThreshold]; ok {
		if f, err := kube.ParseErrorRate(v); err == nil {
			t.errorRate = f
		} else {
			bad = append(bad, v1alpha1.AnnotationHighErrorRateThreshold+": "+err.Error())
		}
	}
	if v, ok := template[v1alpha1.AnnotationHighLatencyP99Ms]; ok {
		if f, err := kube.ParseLatencyMs(v); err == nil {
			t.latencyP99Ms = f
		} else {
			bad = append(bad, v1alpha1.AnnotationHighLatencyP99Ms+": "+err.Error())
		}
	}
	return t, strings.Join(bad, "; ")
}
