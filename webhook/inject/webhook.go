package inject

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"sync"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	sigsjson "sigs.k8s.io/json"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Path is where the webhook is mounted; the MutatingWebhookConfiguration points here.
const Path = "/mutate-v1-pod"

// MaxBodyBytes bounds an AdmissionReview body. The API server caps an object at 3 MiB too,
// and etcd at 1.5 MiB, so nothing legitimate is bigger.
const MaxBodyBytes = 3 << 20

// warningPrefix tells the reader of `kubectl` output which webhook a warning comes from.
const warningPrefix = "kong-watcher: "

var podKind = metav1.GroupVersionKind{Group: "", Version: "v1", Kind: "Pod"}

// Webhook is the http.Handler mounted at Path. It is a raw handler rather than
// controller-runtime's admission.Webhook so that a malformed AdmissionReview gets a real
// HTTP 400 saying what is wrong. A well-formed review is always allowed: the webhook only
// ever adds the agent, and any internal error leaves the pod unchanged.
type Webhook struct {
	cfg      Config
	recorder events.EventRecorder
	log      logr.Logger

	// Events go through a bounded queue to one goroutine, so a slow or stuck recorder can
	// never hold up an admission: when the queue is full the Event is dropped and logged.
	eventQueue chan func()
	startQueue sync.Once

	namespaceLabels NamespaceLabels
}

// NamespaceLabels returns the labels of a namespace (from an informer cache, typically).
type NamespaceLabels func(ctx context.Context, namespace string) (map[string]string, error)

// WithNamespaceLabels lets the webhook see Pod Security Admission labels: in a namespace that
// enforces the baseline or restricted level, the API server would reject the injected pod
// (the agent adds capabilities and an Unconfined seccomp profile), so the Kong pod could not
// be created at all. With a lookup, such namespaces are skipped (reason PodSecurityEnforced).
// Optional: without it every labelled pod is injected.
func (w *Webhook) WithNamespaceLabels(f NamespaceLabels) *Webhook {
	w.namespaceLabels = f
	return w
}

// podSecurityEnforceLabel is Pod Security Admission's enforcement level label.
const podSecurityEnforceLabel = "pod-security.kubernetes.io/enforce"

// ReasonPodSecurityEnforced: the namespace enforces a Pod Security level the agent violates.
const ReasonPodSecurityEnforced = "PodSecurityEnforced"

// checkPodSecurity turns an inject decision into a skip when the namespace's enforced Pod
// Security level would reject the agent. A failed lookup is logged and injection goes on:
// most namespaces carry no enforce label.
func (w *Webhook) checkPodSecurity(ctx context.Context, namespace string, d Decision) Decision {
	if w.namespaceLabels == nil {
		return d
	}
	labels, err := w.namespaceLabels(ctx, namespace)
	if err != nil {
		w.log.Error(err, "reading namespace labels; injecting without a Pod Security check", "namespace", namespace)
		return d
	}
	switch level := labels[podSecurityEnforceLabel]; level {
	case "baseline", "restricted":
		return Decision{Reason: ReasonPodSecurityEnforced, Message: fmt.Sprintf(
			"namespace %q enforces Pod Security level %q, which forbids the agent's BPF capabilities "+
				"and Unconfined seccomp; label the namespace %s=privileged to monitor Kong here",
			namespace, level, podSecurityEnforceLabel)}
	}
	return d
}

// eventQueueLen bounds the Events waiting for the recorder (a burst of a big rollout).
const eventQueueLen = 256

// NewWebhook returns the admission handler. recorder may be nil (no Events); with
// controller-runtime it is mgr.GetEventRecorder("kong-watcher-webhook"). cfg should have
// passed Validate.
func NewWebhook(cfg Config, recorder events.EventRecorder, log logr.Logger) *Webhook {
	return &Webhook{cfg: cfg, recorder: recorder, log: log, eventQueue: make(chan func(), eventQueueLen)}
}

// badRequest is an AdmissionReview the handler refuses with HTTP 400.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badf(format string, args ...any) error {
	return &badRequest{msg: fmt.Sprintf(format, args...)}
}

// ServeHTTP answers one AdmissionReview.
func (w *Webhook) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		http.Error(rw, fmt.Sprintf("method %s not allowed: send the AdmissionReview with POST", req.Method),
			http.StatusMethodNotAllowed)
		return
	}
	review, err := readReview(rw, req)
	if err == nil {
		review.Response, err = w.admit(req.Context(), review.Request)
	}
	if err != nil {
		w.log.Info("rejecting malformed admission request", "error", err.Error(), "remote", req.RemoteAddr)
		http.Error(rw, "bad AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	// The response echoes the request's apiVersion and kind; the request itself is not sent
	// back (the API server ignores it and it may be megabytes).
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: review.Response}
	body, err := json.Marshal(out)
	if err != nil {
		// Cannot happen with these types; answer "allowed" by hand so the pod is not held up.
		w.log.Error(err, "encoding AdmissionReview response")
		body = fmt.Appendf(nil, `{"apiVersion":%q,"kind":"AdmissionReview","response":{"uid":%q,"allowed":true}}`,
			review.APIVersion, review.Response.UID)
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(http.StatusOK)
	_, _ = rw.Write(body)
}

// readReview reads and checks the AdmissionReview envelope of req.
func readReview(rw http.ResponseWriter, req *http.Request) (*admissionv1.AdmissionReview, error) {
	ct := req.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return nil, badf("Content-Type must be application/json, got %q", ct)
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, req.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, badf("body is larger than %d bytes (3 MiB)", MaxBodyBytes)
		}
		return nil, badf("reading body: %v", err)
	}
	return decodeReview(body)
}

// decodeReview parses and checks an admission.k8s.io/v1 AdmissionReview request body.
func decodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, badf("empty body: expected an admission.k8s.io/v1 AdmissionReview")
	}
	var review admissionv1.AdmissionReview
	// Case-sensitive like the API server's own decoder: "UID" is not "uid".
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(body, &review); err != nil {
		return nil, badf("body is not a JSON AdmissionReview: %v", err)
	}
	if review.APIVersion != admissionv1.SchemeGroupVersion.String() || review.Kind != "AdmissionReview" {
		return nil, badf("expected apiVersion %q kind \"AdmissionReview\", got apiVersion %q kind %q "+
			"(set admissionReviewVersions: [v1] in the webhook configuration)",
			admissionv1.SchemeGroupVersion.String(), review.APIVersion, review.Kind)
	}
	if review.Request == nil {
		return nil, badf("AdmissionReview has no request")
	}
	if review.Request.UID == "" {
		return nil, badf("AdmissionReview request has no uid")
	}
	return &review, nil
}

// admit answers a checked request. The error is for a malformed pod only (HTTP 400).
func (w *Webhook) admit(ctx context.Context, req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, error) {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Operation != admissionv1.Create || req.Kind != podKind || req.SubResource != "" {
		w.log.V(1).Info("not a pod creation, allowed unchanged", "uid", req.UID,
			"operation", req.Operation, "kind", req.Kind.String(), "subResource", req.SubResource)
		return resp, nil
	}
	pod, err := decodePod(req.Object.Raw)
	if err != nil {
		return nil, err
	}
	namespace := req.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}

	d, warnings, patch, err := w.mutate(ctx, pod, namespace, req.Object.Raw)
	if err != nil {
		// Never deny and never send a patch we are unsure of: the pod goes on without the agent.
		w.log.Error(err, "injection failed; pod admitted unchanged", "uid", req.UID,
			"namespace", namespace, "pod", podName(pod))
		d = Decision{Reason: "InternalError", Message: err.Error()}
		warnings, patch = nil, nil
	}
	if len(patch) > 0 {
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = patch, &pt
	}
	for _, wmsg := range warnings {
		resp.Warnings = append(resp.Warnings, warningPrefix+wmsg)
	}

	owner := metav1.GetControllerOfNoCopy(pod)
	w.log.Info("injection decision", "uid", req.UID, "namespace", namespace, "pod", podName(pod),
		"owner", ownerString(owner), "inject", d.Inject, "reason", d.Reason, "message", d.Message,
		"warnings", warnings, "dryRun", req.DryRun != nil && *req.DryRun)
	// Events are the one side effect: none for dry runs (sideEffects: NoneOnDryRun).
	if req.DryRun == nil || !*req.DryRun {
		w.recordEvent(pod, namespace, owner, d)
	}
	return resp, nil
}

// decodePod decodes request.object as a v1 Pod.
func decodePod(raw []byte) (*corev1.Pod, error) {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, badf("pod CREATE request has no object")
	}
	var pod corev1.Pod
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(raw, &pod); err != nil {
		return nil, badf("request object is not a v1 Pod: %v", err)
	}
	if (pod.Kind != "" && pod.Kind != "Pod") || (pod.APIVersion != "" && pod.APIVersion != "v1") {
		return nil, badf("request object is apiVersion %q kind %q, not a v1 Pod", pod.APIVersion, pod.Kind)
	}
	return &pod, nil
}

// mutate decides, injects and computes the patch against raw. A panic is turned into an
// error so that one odd pod cannot break the webhook for everyone.
func (w *Webhook) mutate(ctx context.Context, pod *corev1.Pod, namespace string, raw []byte) (d Decision, warnings []string, patch []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic while injecting: %v", r)
		}
	}()
	d = Decide(pod, namespace, w.cfg)
	if d.Inject {
		d = w.checkPodSecurity(ctx, namespace, d)
	}
	if !d.Inject {
		return d, d.Warnings, nil, nil
	}
	original := pod.DeepCopy()
	warnings = Inject(pod, w.cfg)
	patch, err = createPatch(original, pod, raw)
	if err != nil {
		return d, nil, nil, err
	}
	d.Message = fmt.Sprintf("injected kong-watcher agent %s as %s", w.cfg.AgentVersion, sidecarKind(isNative(pod)))
	return d, warnings, patch, nil
}

// createPatch returns the JSON patch from original to mutated, checked against raw.
//
// The diff is taken between original and mutated both encoded from the same Go types, not
// between the API server's raw bytes and mutated: fields this build's k8s.io/api does not know
// (a newer API server) then appear in neither side, so the patch never removes them.
// The patch is then applied to raw, because a patch that fails to apply makes the API server
// reject the pod regardless of failurePolicy; such a patch is an internal error instead.
func createPatch(original, mutated *corev1.Pod, raw []byte) ([]byte, error) {
	before, err := json.Marshal(original)
	if err != nil {
		return nil, fmt.Errorf("encoding original pod: %w", err)
	}
	after, err := json.Marshal(mutated)
	if err != nil {
		return nil, fmt.Errorf("encoding mutated pod: %w", err)
	}
	ops, err := jsonpatch.CreatePatch(before, after)
	if err != nil {
		return nil, fmt.Errorf("computing JSON patch: %w", err)
	}
	if len(ops) == 0 {
		return nil, nil
	}
	// CreatePatch walks maps in random order; sorted ops give stable patches and golden
	// files. Our ops touch distinct paths, and the check below proves the order is sound.
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Path < ops[j].Path })
	patch, err := json.Marshal(ops)
	if err != nil {
		return nil, fmt.Errorf("encoding JSON patch: %w", err)
	}
	p, err := jsonpatchapply.DecodePatch(patch)
	if err != nil {
		return nil, fmt.Errorf("decoding our own JSON patch: %w", err)
	}
	// One safety check per review: the patch applies to the pod the API server holds (an op
	// on a path that does not exist there would make the API server reject the pod, whatever
	// the failurePolicy). That the patch reproduces the mutated pod is proven by the golden
	// and fuzz tests; checking it here too cost ~55% of the handler's CPU (bench-webhook).
	if _, err := p.Apply(raw); err != nil {
		return nil, fmt.Errorf("JSON patch does not apply to the request's pod: %w", err)
	}
	return patch, nil
}

// recordEvent records Injected or InjectionSkipped on the pod's controller (its ReplicaSet,
// typically), built from the ownerReference so no API call is needed at admission time: the
// pod itself has no name yet at CREATE and no UID. Unlabelled pods and re-invocations
// (AlreadyInjected) get no Event: they are not news to anyone.
func (w *Webhook) recordEvent(pod *corev1.Pod, namespace string, owner *metav1.OwnerReference, d Decision) {
	if w.recorder == nil || owner == nil {
		return
	}
	switch d.Reason {
	case ReasonNotLabelled, ReasonAlreadyInjected:
		return
	}
	ref := &corev1.ObjectReference{
		APIVersion: owner.APIVersion,
		Kind:       owner.Kind,
		Name:       owner.Name,
		Namespace:  namespace,
		UID:        owner.UID,
	}
	if owner.APIVersion == "v1" && owner.Kind == "Node" {
		ref.Namespace = "" // mirror pods of static pods are owned by their (cluster-scoped) Node
	}
	reason, note := kwv1.ReasonInjected, fmt.Sprintf("%s into pod %s", d.Message, podName(pod))
	if !d.Inject {
		reason = kwv1.ReasonInjectionSkipped
		note = fmt.Sprintf("kong-watcher agent not injected into pod %s: %s (%s)", podName(pod), d.Message, d.Reason)
	}
	w.enqueueEvent(func() {
		defer func() {
			if r := recover(); r != nil {
				w.log.Error(fmt.Errorf("%v", r), "recording event panicked", "owner", ownerString(owner), "reason", reason)
			}
		}()
		w.recorder.Eventf(ref, nil, corev1.EventTypeNormal, reason, "Inject", "%s", note)
	})
}

// enqueueEvent hands an Event to the recording goroutine without ever waiting for it.
func (w *Webhook) enqueueEvent(record func()) {
	w.startQueue.Do(func() {
		go func() {
			for record := range w.eventQueue {
				record()
			}
		}()
	})
	select {
	case w.eventQueue <- record:
	default:
		w.log.Info("event queue full; event dropped")
	}
}

// isNative reports whether the injected agent is an init container (native sidecar).
func isNative(pod *corev1.Pod) bool {
	for _, c := range pod.Spec.InitContainers {
		if c.Name == kwv1.AgentContainerName {
			return true
		}
	}
	return false
}

// podName names a pod for logs and Events; at CREATE a ReplicaSet's pod only has generateName.
func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	if pod.GenerateName != "" {
		return pod.GenerateName + "*"
	}
	return "<unnamed>"
}

func ownerString(o *metav1.OwnerReference) string {
	if o == nil {
		return ""
	}
	return o.Kind + "/" + o.Name
}
