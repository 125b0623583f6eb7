package inject

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
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

// Webhook is the http.Handler mounted at Path. A well-formed review is always allowed: the
// webhook only ever adds the agent, and any internal error leaves the pod unchanged.
//
// It reads the AdmissionReview envelope itself rather than being an admission.Handler behind
// controller-runtime's admission.Webhook (whose Response.WithWarnings would carry the
// warnings just as well), because admission.Webhook:
//   - answers a malformed review with HTTP 200 and allowed: false, a denial whatever the
//     failurePolicy, where this handler answers HTTP 400 saying what is wrong, which the API
//     server treats as a failed call and so, with failurePolicy Ignore, admits the pod;
//   - decodes any number of reviews of up to 7 MiB at once, where this handler decodes at
//     most maxDecoding reviews of up to MaxBodyBytes, each given bodyReadTimeout to arrive,
//     which bounds the webhook's memory under a burst;
//   - costs more per review: around the same injection, for the 2815-byte review of
//     docs/benchmarks.md's webhook figures (102 us CPU and 292 allocations for this handler),
//     it allocated 30 more times (332 against 302) and took about 20 us more, best of four
//     in-process runs of 2000 reviews. TestRawEnvelopeAllocatesLess keeps the first true.
type Webhook struct {
	cfg      Config
	recorder events.EventRecorder
	log      logr.Logger

	// Events go through a bounded queue to one goroutine, so a slow or stuck recorder can
	// never hold up an admission: when the queue is full the Event is dropped and logged.
	eventQueue chan func()
	startQueue sync.Once

	admissionCheck AdmissionCheck
	// decoding bounds the reviews being decoded at once, and so the webhook's memory: a
	// review of a few MiB takes several times its size while it is decoded.
	decoding chan struct{}
	// injected is the Decision message of an injection, as a plain ([0]) and a native ([1])
	// sidecar: built once, not per review.
	injected [2]string
}

// maxDecoding is how many AdmissionReviews are read and decoded at once; more wait.
const maxDecoding = 4

// bodyReadTimeout bounds how long a review's body may take to arrive.
const bodyReadTimeout = 2 * time.Second

// AdmissionCheck asks the API server whether it would admit pod, the pod as injected, in
// namespace (a server-side dry-run create). A non-nil error means it would not, or that it
// could not say: either way the pod is created without the agent.
type AdmissionCheck func(ctx context.Context, pod *corev1.Pod, namespace string) error

// WithAdmissionCheck makes the webhook verify every injected pod before answering. The agent
// adds capabilities and an Unconfined seccomp profile, resources, a container: Pod Security
// (the namespace's level or the cluster's default), a ResourceQuota or a policy engine may
// reject that pod, and the API server would then refuse it whatever the webhook's
// failurePolicy, leaving Kong without pods. With a check, such a pod is admitted unchanged
// and a Warning says why (reason AdmissionWouldReject). Without one every pod is injected.
func (w *Webhook) WithAdmissionCheck(check AdmissionCheck) *Webhook {
	w.admissionCheck = check
	return w
}

// checkTimeout bounds the dry-run: the API server gives the whole webhook call
// timeoutSeconds (5 s in config/webhook), and an answer without the agent is better than none.
const checkTimeout = 2500 * time.Millisecond

// maxCheckMessage bounds the API server's refusal quoted in warnings and Events.
const maxCheckMessage = 600

// admissible runs the admission check on the injected pod, turning a refusal into a skip.
func (w *Webhook) admissible(ctx context.Context, pod *corev1.Pod, namespace string, d Decision) Decision {
	if w.admissionCheck == nil {
		return d
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	err := w.admissionCheck(ctx, pod, namespace)
	if err == nil {
		return d
	}
	return Decision{Reason: ReasonAdmissionWouldReject, Warning: true, Warnings: d.Warnings, Message: fmt.Sprintf(
		"the API server would not admit this pod with the agent (%s); it is created without it. The agent needs "+
			"capabilities BPF, PERFMON and SYS_PTRACE and seccomp Unconfined: to monitor Kong here allow them, "+
			"e.g. label the namespace pod-security.kubernetes.io/enforce=privileged or exempt the %s container "+
			"in your policy engine, and leave room for its resources in any quota",
		truncate(err.Error(), maxCheckMessage), kwv1.AgentContainerName)}
}

// maxEventNote stays under the API server's 1 KiB limit on an Event's note.
const maxEventNote = 1000

// eventQueueLen bounds the Events waiting for the recorder (a burst of a big rollout).
const eventQueueLen = 256

// NewWebhook returns the admission handler. recorder may be nil (no Events); with
// controller-runtime it is mgr.GetEventRecorder("kong-watcher-webhook"). cfg should have
// passed Validate.
func NewWebhook(cfg Config, recorder events.EventRecorder, log logr.Logger) *Webhook {
	w := &Webhook{cfg: cfg, recorder: recorder, log: log, eventQueue: make(chan func(), eventQueueLen),
		decoding: make(chan struct{}, maxDecoding)}
	for i, native := range []bool{false, true} {
		w.injected[i] = fmt.Sprintf("injected kong-watcher agent %s as %s", cfg.AgentVersion, sidecarKind(native))
	}
	return w
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
	select {
	case w.decoding <- struct{}{}:
	case <-req.Context().Done():
		http.Error(rw, "kong-watcher webhook busy", http.StatusServiceUnavailable)
		return
	}
	release := sync.OnceFunc(func() { <-w.decoding })
	defer release()
	review, err := readReview(rw, req)
	if err == nil {
		review.Response, err = w.admit(req.Context(), review.Request, release)
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
	// A review holds one of the few decoding slots while its body arrives: a sender that
	// trickles it (the API server never does) gives the slot up after bodyReadTimeout.
	_ = http.NewResponseController(rw).SetReadDeadline(time.Now().Add(bodyReadTimeout))
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
// decoded is called once the request's bytes are no longer needed, before the admission
// check waits on the API server.
func (w *Webhook) admit(ctx context.Context, req *admissionv1.AdmissionRequest, decoded func()) (*admissionv1.AdmissionResponse, error) {
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
	req.Object.Raw = nil
	namespace := req.Namespace
	if namespace == "" {
		namespace = pod.Namespace
	}

	d, warnings, patch, err := w.mutate(ctx, pod, namespace, decoded)
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
	// Events are the one side effect: none for dry runs (sideEffects: NoneOnDryRun), and none
	// in excluded namespaces: the webhook configuration never sends their pods, so such a
	// review did not come from the API server and must not write there.
	if (req.DryRun == nil || !*req.DryRun) && !w.cfg.excluded(namespace) {
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

// mutate decides, injects, builds the patch and checks the injected pod with the API
// server. A panic is turned into an error so that one odd pod cannot break the webhook for
// everyone.
func (w *Webhook) mutate(ctx context.Context, pod *corev1.Pod, namespace string, decoded func()) (d Decision, warnings []string, patch []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic while injecting: %v", r)
		}
	}()
	d = Decide(pod, namespace, w.cfg)
	if !d.Inject {
		return d, skipWarnings(d), nil, nil
	}
	hadInit := len(pod.Spec.InitContainers) > 0
	volumesBefore := len(pod.Spec.Volumes)
	before := maps.Clone(pod.Annotations)
	warnings = Inject(pod, w.cfg)
	patch, err = buildPatch(pod, hadInit, volumesBefore, before)
	if err != nil {
		return d, nil, nil, err
	}
	decoded()
	if d = w.admissible(ctx, pod, namespace, d); !d.Inject {
		return d, skipWarnings(d), nil, nil
	}
	d.Message = w.injected[0]
	if isNative(pod) {
		d.Message = w.injected[1]
	}
	return d, warnings, patch, nil
}

// skipWarnings are the admission warnings of a pod left without the agent: the override
// warnings, plus the reason itself when its owner should act on it.
func skipWarnings(d Decision) []string {
	if !d.Warning {
		return d.Warnings
	}
	return append(slices.Clip(d.Warnings), "kong-watcher agent not injected: "+d.Message)
}

// patchOp is one RFC 6902 operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// buildPatch writes the JSON patch for what Inject did to pod: the agent container appended,
// shareProcessNamespace set, the report token's volume and the annotations added. It is built from the mutation itself, not by
// diffing two encodings of the pod: fields this build's k8s.io/api does not know (a newer API
// server) are never touched, and the cost does not grow with the size of the pod.
// hadInit says whether the request's pod had init containers, volumesBefore how many volumes
// it had, and before holds its annotations
// (an "add" on a member that exists replaces it, so an empty list or map in the request is
// replaced whole, which is what it means).
func buildPatch(pod *corev1.Pod, hadInit bool, volumesBefore int, before map[string]string) ([]byte, error) {
	ops := make([]patchOp, 0, 8)
	switch {
	case isNative(pod) && hadInit:
		ops = append(ops, patchOp{"add", "/spec/initContainers/-", pod.Spec.InitContainers[len(pod.Spec.InitContainers)-1]})
	case isNative(pod):
		ops = append(ops, patchOp{"add", "/spec/initContainers", pod.Spec.InitContainers})
	case len(pod.Spec.Containers) > 1:
		ops = append(ops, patchOp{"add", "/spec/containers/-", pod.Spec.Containers[len(pod.Spec.Containers)-1]})
	default:
		ops = append(ops, patchOp{"add", "/spec/containers", pod.Spec.Containers})
	}
	ops = append(ops, patchOp{"add", "/spec/shareProcessNamespace", true})
	switch n := len(pod.Spec.Volumes); {
	case n == volumesBefore:
	case volumesBefore > 0:
		ops = append(ops, patchOp{"add", "/spec/volumes/-", pod.Spec.Volumes[n-1]})
	default:
		ops = append(ops, patchOp{"add", "/spec/volumes", pod.Spec.Volumes})
	}
	if len(before) == 0 {
		ops = append(ops, patchOp{"add", "/metadata/annotations", pod.Annotations})
	} else {
		keys := make([]string, 0, 4)
		for k, v := range pod.Annotations {
			if old, ok := before[k]; !ok || old != v {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys) // stable patches and golden files
		for _, k := range keys {
			ops = append(ops, patchOp{"add", annotationPath(k), pod.Annotations[k]})
		}
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return nil, fmt.Errorf("encoding JSON patch: %w", err)
	}
	return patch, nil
}

// pointerEscaper escapes a map key for a JSON pointer (RFC 6901): "~" and "/".
var pointerEscaper = strings.NewReplacer("~", "~0", "/", "~1")

func escapePointer(k string) string { return pointerEscaper.Replace(k) }

// injectedPaths are the JSON pointers of the annotations Inject writes, built once: two
// allocations fewer per annotation per review.
var injectedPaths = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{kwv1.AnnotationInjected, AnnotationPrometheusScrape, AnnotationPrometheusPort, AnnotationPrometheusPath} {
		m[k] = "/metadata/annotations/" + escapePointer(k)
	}
	return m
}()

// annotationPath is the JSON pointer of annotation k.
func annotationPath(k string) string {
	if p, ok := injectedPaths[k]; ok {
		return p
	}
	return "/metadata/annotations/" + escapePointer(k)
}

// recordEvent records Injected or InjectionSkipped on the pod's controller (its ReplicaSet,
// typically), built from the ownerReference so no API call is needed at admission time: the
// pod itself has no name yet at CREATE and no UID. Unlabelled pods and re-invocations
// (AlreadyInjected) get no Event: they are not news to anyone. Nor do pods without a
// workload controller (eventOwner): their creator still gets the warnings.
func (w *Webhook) recordEvent(pod *corev1.Pod, namespace string, owner *metav1.OwnerReference, d Decision) {
	if w.recorder == nil || !eventOwner(owner) {
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
	reason, note, eventType := kwv1.ReasonInjected, fmt.Sprintf("%s into pod %s", d.Message, podName(pod)), corev1.EventTypeNormal
	if d.Warning {
		eventType = corev1.EventTypeWarning
	}
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
		w.recorder.Eventf(ref, nil, eventType, reason, "Inject", "%s", truncate(note, maxEventNote))
	})
}

// workloadGroups are the API groups of the namespaced workload kinds that own pods, and
// whose Events the webhook records.
var workloadGroups = map[string]string{
	"ReplicaSet":            "apps",
	"StatefulSet":           "apps",
	"DaemonSet":             "apps",
	"Deployment":            "apps",
	"Job":                   "batch",
	"CronJob":               "batch",
	"ReplicationController": "",
}

// eventOwner reports whether owner, the pod's controller, is a workload the Event may be
// about. The ownerReference is the pod creator's word, not checked by the API server: an
// Event about whatever it names would let anyone who may create a pod have the webhook write
// their text about any object. A cluster-scoped owner (a Node, as a mirror pod has) would even
// put it in the "default" namespace. A workload kind is namespaced, so the Event stays in the
// pod's namespace, about an object of that namespace.
func eventOwner(owner *metav1.OwnerReference) bool {
	if owner == nil || owner.Name == "" {
		return false
	}
	group, ok := workloadGroups[owner.Kind]
	if !ok {
		return false
	}
	gv, err := schema.ParseGroupVersion(owner.APIVersion)
	return err == nil && gv.Group == group && gv.Version != ""
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

// truncate keeps warnings and Events short when they quote a user's value or an error.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
