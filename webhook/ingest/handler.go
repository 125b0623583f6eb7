// Package ingest is the manager's side of agent reporting: it accepts the Reports agents POST
// to v1alpha1.ReportPath, verifies who sent them (the pod-bound projected service-account token,
// checked with a TokenReview), and writes what they carry with the manager's own identity: the
// statistics annotations of that pod, and the Events it asked for. So Kong's service account
// needs no rights, and an agent can only ever write its own pod's kong-watcher.io/* statistics.
//
// Only injected pods report: a verified token whose pod carries neither the webhook's
// kong-watcher.io/injected annotation nor an agent container is refused (403), so no other
// pod can make the manager write on it.
//
// Every refusal is answered with a status and a one-line reason, logged (rate-limited) and
// counted; nothing is written for it. Work per report is bounded: the body size, the decoded
// shape, the reports in progress at once, the TokenReviews per second, and the reports per
// pod (about two per stats interval, with a burst; more are answered 429 with Retry-After).
package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/events"

	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// FieldManager names the manager's writes in managedFields.
const FieldManager = "kong-watcher-manager"

// Options configures a Handler.
type Options struct {
	Auth *Authenticator
	// Client writes the pods' annotations (patch, get).
	Client kubernetes.Interface
	// Recorder records the agents' Events on their pods (reporting controller
	// "kong-watcher-agent", so `kubectl describe pod` shows who it is from).
	Recorder events.EventRecorder
	// MaxInFlight bounds the reports handled at once; more are answered 429 at once.
	MaxInFlight int
	// MaxStatsJSON bounds the kong-watcher.io/stats annotation (<= 0: the default 16 KiB).
	MaxStatsJSON int
	// RequestTimeout bounds the API calls of one report.
	RequestTimeout time.Duration
	// PodReportBurst is how many reports a pod may send back to back (<= 0: 10); beyond it a
	// pod may send one every half stats interval (its agent's, at most half the default).
	PodReportBurst int
	// MaxTrackedPods bounds the pods whose report rate is remembered (<= 0: 4,096); the least
	// recently reporting are forgotten first.
	MaxTrackedPods int
	Log            logr.Logger
	// Observe, when set, hears the outcome of every report (metrics).
	Observe func(result string)
}

// Handler serves v1alpha1.ReportPath.
type Handler struct {
	o   Options
	sem chan struct{}

	limiters *keyedLimiters[types.UID] // per pod
	now      func() time.Time

	logMu   sync.Mutex
	lastLog map[string]time.Time // refusal reason class -> last logged
}

// NewHandler returns the report endpoint.
func NewHandler(o Options) *Handler {
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 32
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 10 * time.Second
	}
	if o.PodReportBurst <= 0 {
		o.PodReportBurst = 10
	}
	if o.MaxTrackedPods <= 0 {
		o.MaxTrackedPods = 4096
	}
	h := &Handler{o: o, sem: make(chan struct{}, o.MaxInFlight), lastLog: map[string]time.Time{},
		limiters: newKeyedLimiters[types.UID](o.MaxTrackedPods, limiterIdleTTL(o.PodReportBurst)), now: time.Now}
	if o.Auth != nil && o.Client != nil {
		o.Auth.admit = h.admit
	}
	return h
}

// bodyReadTimeout bounds how long a client may take to send its report.
const bodyReadTimeout = 5 * time.Second

// Results, for Observe and the logs.
const (
	ResultAccepted     = "accepted"
	ResultBusy         = "busy"
	ResultUnauthorized = "unauthorized"
	ResultForbidden    = "forbidden"
	ResultBadRequest   = "bad_request"
	ResultPodGone      = "pod_gone"
	ResultError        = "error"
)

func (h *Handler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.refuse(w, req, http.StatusMethodNotAllowed, ResultBadRequest, "only POST is accepted", "")
		return
	}
	select {
	case h.sem <- struct{}{}:
		defer func() { <-h.sem }()
	default:
		w.Header().Set("Retry-After", "5")
		h.refuse(w, req, http.StatusTooManyRequests, ResultBusy, "too many reports in progress; retry later", "")
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), h.o.RequestTimeout)
	defer cancel()

	token, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	token = strings.TrimSpace(token) // the form Authenticate caches and Forget drops
	if !ok {
		h.refuse(w, req, http.StatusUnauthorized, ResultUnauthorized, "no bearer token", "")
		return
	}
	source, _, _ := net.SplitHostPort(req.RemoteAddr)
	id, err := h.o.Auth.AuthenticateFrom(ctx, token, source)
	if err != nil {
		status := statusOf(err)
		result := ResultUnauthorized
		switch status {
		case http.StatusTooManyRequests:
			w.Header().Set("Retry-After", "5")
			result = ResultBusy
		case http.StatusForbidden:
			result = ResultForbidden
		case http.StatusGone:
			result = ResultPodGone
		case http.StatusServiceUnavailable, http.StatusInternalServerError:
			result = ResultError
		}
		h.refuse(w, req, status, result, err.Error(), "")
		return
	}
	who := id.Namespace + "/" + id.Pod
	if wait, ok := h.allow(id); !ok {
		secs := int(math.Ceil(wait.Seconds()))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		h.refuse(w, req, http.StatusTooManyRequests, ResultBusy,
			fmt.Sprintf("pod %s reports too often (more than %d back to back, then one every %s); retry in %ds",
				who, h.o.PodReportBurst, reportPeriod(id), secs), who)
		return
	}
	if ct := req.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		h.refuse(w, req, http.StatusUnsupportedMediaType, ResultBadRequest, "want Content-Type application/json", who)
		return
	}
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, req.Body, v1alpha1.MaxReportBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.refuse(w, req, http.StatusRequestEntityTooLarge, ResultBadRequest, fmt.Sprintf("report larger than %d bytes", v1alpha1.MaxReportBytes), who)
		} else {
			h.refuse(w, req, http.StatusBadRequest, ResultBadRequest, "reading the report: "+err.Error(), who)
		}
		return
	}
	rep, err := DecodeReport(body)
	if err != nil {
		h.refuse(w, req, http.StatusBadRequest, ResultBadRequest, err.Error(), who)
		return
	}
	if rep.Pod.Namespace != id.Namespace || rep.Pod.Name != id.Pod {
		h.refuse(w, req, http.StatusForbidden, ResultForbidden,
			fmt.Sprintf("the token is bound to pod %s, the report claims pod %s/%s", who, rep.Pod.Namespace, rep.Pod.Name), who)
		return
	}

	pod, err := h.write(ctx, id, rep)
	switch {
	case err == nil:
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err) || isUIDMismatch(err):
		// Gone, or a new pod with the same name: the token's pod no longer exists.
		h.o.Auth.Forget(token)
		h.refuse(w, req, http.StatusGone, ResultPodGone, "pod "+who+" (uid "+string(id.PodUID)+") no longer exists", who)
		return
	default:
		h.refuse(w, req, http.StatusServiceUnavailable, ResultError, "writing to the API server failed: "+err.Error(), who)
		return
	}
	h.record(id, rep.Events)
	resp := v1alpha1.ReportResponse{}
	for _, k := range v1alpha1.AgentReadAnnotations {
		if v, ok := pod.Annotations[k]; ok {
			if resp.Annotations == nil {
				resp.Annotations = map[string]string{}
			}
			resp.Annotations[k] = v
		}
	}
	h.observe(ResultAccepted)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

// write patches the pod's statistics annotations (or, for an Events-only report, reads the
// pod), with the token's pod UID as a precondition: a pod deleted and created again under the
// same name is not written by the old pod's agent.
func (h *Handler) write(ctx context.Context, id Identity, rep *v1alpha1.Report) (*corev1.Pod, error) {
	pods := h.o.Client.CoreV1().Pods(id.Namespace)
	if rep.Stats == nil {
		pod, err := pods.Get(ctx, id.Pod, metav1.GetOptions{})
		if err == nil && pod.UID != id.PodUID {
			return nil, apierrors.NewNotFound(corev1.Resource("pods"), id.Pod)
		}
		return pod, err
	}
	return pods.Patch(ctx, id.Pod, types.MergePatchType, PodPatch(id.PodUID, *rep.Stats, h.o.MaxStatsJSON),
		metav1.PatchOptions{FieldManager: FieldManager})
}

// isUIDMismatch: the API server answers a merge patch whose metadata.uid is not the pod's (a
// new pod of the same name) with 422, metadata.uid being immutable, not with a conflict.
func isUIDMismatch(err error) bool {
	var st apierrors.APIStatus
	if !apierrors.IsInvalid(err) || !errors.As(err, &st) || st.Status().Details == nil {
		return false
	}
	for _, c := range st.Status().Details.Causes {
		if c.Field == "metadata.uid" {
			return true
		}
	}
	return false
}

// PodPatch is the JSON merge patch that sets a pod's statistics annotations from s: every key of
// v1alpha1.ReportedAnnotations set or removed, no other key, label or field mentioned; the uid
// makes the API server refuse it for any other pod of that name.
func PodPatch(uid types.UID, s v1alpha1.Stats, maxStatsJSON int) []byte {
	ann := map[string]any{}
	for _, k := range v1alpha1.ReportedAnnotations {
		ann[k] = nil
	}
	for k, v := range report.Annotations(s, maxStatsJSON) {
		ann[k] = v
	}
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"uid": uid, "annotations": ann}})
	return b
}

// record records the agent's Events on its pod.
func (h *Handler) record(id Identity, evs []v1alpha1.ReportEvent) {
	if h.o.Recorder == nil || len(evs) == 0 {
		return
	}
	ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: id.Namespace, Name: id.Pod, UID: id.PodUID}
	for _, e := range evs {
		h.o.Recorder.Eventf(ref, nil, e.Type, e.Reason, "Report", "%s", e.Message)
	}
}

// refuse answers status with reason (plain text) and logs it, at most once a minute per kind
// of refusal so that a flood cannot flood the log.
func (h *Handler) refuse(w http.ResponseWriter, req *http.Request, status int, result, reason, who string) {
	h.observe(result)
	key := result + "/" + strconv.Itoa(status)
	h.logMu.Lock()
	now := time.Now()
	logIt := now.Sub(h.lastLog[key]) >= time.Minute
	if logIt {
		h.lastLog[key] = now
	}
	h.logMu.Unlock()
	if logIt {
		h.o.Log.Info("report refused (this kind is logged at most once a minute)", "status", status, "reason", reason,
			"pod", who, "remote", req.RemoteAddr)
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, reason+"\n")
}

func (h *Handler) observe(result string) {
	if h.o.Observe != nil {
		h.o.Observe(result)
	}
}
