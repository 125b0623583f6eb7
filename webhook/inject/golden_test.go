package inject

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	jsonpatchapply "github.com/evanphx/json-patch/v5"
	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.json and the fuzz seed corpus from the current output")

// goldenCase is one pod through the whole webhook. The patch it gets is compared with
// testdata/golden/<name>.json ("[]" when the pod is left alone).
type goldenCase struct {
	name      string
	pod       string // testdata/pods/<pod>.yaml
	namespace string
	cfg       func(*Config)
	reason    string // the Decision's reason
	warnings  []string
	event     string // the Event reason on the owner, "" for none
	native    bool   // when injected: as a native sidecar?
}

var goldenCases = []goldenCase{
	{name: "native-sidecar", pod: "kong", namespace: "kong", reason: ReasonInject, event: kwv1.ReasonInjected, native: true},
	{name: "plain-sidecar", pod: "plain-sidecar", namespace: "kong", cfg: func(c *Config) { c.NativeSidecar = false },
		reason: ReasonInject, event: kwv1.ReasonInjected},
	{name: "overrides", pod: "overrides", namespace: "kong", cfg: func(c *Config) { c.NativeSidecar = false },
		reason: ReasonInject, event: kwv1.ReasonInjected, native: true},
	{name: "invalid-overrides", pod: "invalid-overrides", namespace: "kong", reason: ReasonInject,
		event: kwv1.ReasonInjected, native: true, warnings: []string{
			`annotation kong-watcher.io/log-level ignored: log level "verbose": want debug, info, warn or error; using info`,
			`annotation kong-watcher.io/json-log ignored: JSON log "yes please": want true or false; using true`,
			`annotation kong-watcher.io/process-name ignored: process name "/usr/local/openresty/nginx/sbin/...": want a kernel process name (at most 15 bytes, no '/')`,
			`annotation kong-watcher.io/stats-interval ignored: stats interval "500ms": want a Go duration between 1s and 1h; using 30s`,
			`annotation kong-watcher.io/native-sidecar ignored: native sidecar "maybe": want true or false; using true`,
		}},
	{name: "already-injected", pod: "already-injected", namespace: "kong", reason: ReasonAlreadyInjected},
	{name: "share-process-namespace-false", pod: "share-process-namespace-false", namespace: "kong",
		reason: ReasonShareProcessNamespaceDisabled, event: kwv1.ReasonInjectionSkipped},
	{name: "unlabelled", pod: "unlabelled", namespace: "kong", reason: ReasonNotLabelled},
	{name: "init-and-containers", pod: "init-and-containers", namespace: "kong", reason: ReasonInject,
		event: kwv1.ReasonInjected, native: true},
	{name: "prometheus-annotated", pod: "prometheus-annotated", namespace: "kong", reason: ReasonInject,
		event: kwv1.ReasonInjected, native: true},
	// No Event: the webhook configuration never sends pods of excluded namespaces, so such a
	// review is not from the API server and must not write there.
	{name: "excluded-namespace", pod: "kong", namespace: "kube-system", reason: ReasonExcludedNamespace},
	{name: "guaranteed", pod: "guaranteed", namespace: "kong", reason: ReasonInject, event: kwv1.ReasonInjected, native: true},
	{name: "pod-level-resources", pod: "pod-level-resources", namespace: "kong", reason: ReasonInject,
		event: kwv1.ReasonInjected, native: true, warnings: []string{"pod-level resources"}},
	{name: "host-network", pod: "host-network", namespace: "kong", reason: ReasonInject, event: kwv1.ReasonInjected,
		native: true, warnings: []string{"hostNetwork pod"}},
	{name: "job-plain-sidecar", pod: "job-plain-sidecar", namespace: "kong", reason: ReasonSidecarWouldNotEnd,
		event: kwv1.ReasonInjectionSkipped, warnings: []string{"never complete"}},
	{name: "host-pid", pod: "host-pid", namespace: "kong", reason: ReasonHostPID, event: kwv1.ReasonInjectionSkipped},
	{name: "label-not-true", pod: "label-not-true", namespace: "kong", reason: ReasonInvalidLabel,
		event: kwv1.ReasonInjectionSkipped, warnings: []string{`kong-watcher.io/inject="True" is not "true"`}},
	{name: "metrics-port-conflict", pod: "metrics-port-conflict", namespace: "kong", reason: ReasonMetricsPortConflict,
		event: kwv1.ReasonInjectionSkipped},
	{name: "token-volume-conflict", pod: "token-volume-conflict", namespace: "kong", reason: ReasonVolumeNameConflict,
		event: kwv1.ReasonInjectionSkipped},
	// Without reporting the agent adds no volume: the pod's own keeps its name.
	{name: "token-volume-no-reporting", pod: "token-volume-conflict", namespace: "kong",
		cfg: func(c *Config) { c.Report = ReportConfig{} }, reason: ReasonInject, event: kwv1.ReasonInjected, native: true},
	{name: "privileged", pod: "kong", namespace: "kong", cfg: func(c *Config) { c.Privileged = true },
		reason: ReasonInject, event: kwv1.ReasonInjected, native: true},
	// The report token is a projected volume of its own: automountServiceAccountToken false
	// (which governs the API server token) changes nothing.
	{name: "no-owner", pod: "bare", namespace: "default", reason: ReasonInject, native: true},
	// Before the webhook has its CA nothing can verify the manager: the agent is injected
	// without reporting.
	{name: "no-manager-ca", pod: "kong", namespace: "kong", cfg: func(c *Config) { c.Report.CA = func() []byte { return nil } },
		reason: ReasonInject, event: kwv1.ReasonInjected, native: true, warnings: []string{"CA is not available yet"}},
}

func (gc goldenCase) config() Config {
	c := testConfig()
	if gc.cfg != nil {
		gc.cfg(&c)
	}
	return c
}

func TestGoldenPatches(t *testing.T) {
	for _, gc := range goldenCases {
		t.Run(gc.name, func(t *testing.T) {
			cfg := gc.config()
			raw := podJSON(t, gc.pod)
			uid := types.UID("uid-" + gc.name)
			body := reviewBody(t, uid, "CREATE", gc.namespace, raw)
			if *update {
				writeFuzzSeed(t, "FuzzServeHTTP", "golden-"+gc.name, body)
			}

			if d := Decide(decodeTestPod(t, raw), gc.namespace, cfg); d.Reason != gc.reason || d.Inject != (gc.reason == ReasonInject) {
				t.Errorf("Decide = %+v, want reason %s", d, gc.reason)
			}

			rec := &captureRecorder{}
			wh := NewWebhook(cfg, rec, testr.New(t))
			resp := admissionResponse(t, post(wh, body), uid)
			flushEvents(t, wh)

			checkWarnings(t, resp.Warnings, gc.warnings)
			checkEvent(t, rec, gc)
			compareGolden(t, gc.name, resp.Patch)

			if gc.reason != ReasonInject {
				if len(resp.Patch) != 0 {
					t.Fatalf("pod not injected (%s) but got a patch: %s", gc.reason, resp.Patch)
				}
				return
			}
			patched := applyPatch(t, raw, resp.Patch)
			checkInjected(t, decodeTestPod(t, raw), decodeTestPod(t, patched), cfg, gc.native)

			// Re-invocation (reinvocationPolicy: IfNeeded) and re-applied dumps: no second agent.
			again := admissionResponse(t, post(NewWebhook(cfg, nil, testr.New(t)),
				reviewBody(t, uid, "CREATE", gc.namespace, patched)), uid)
			if len(again.Patch) != 0 {
				t.Errorf("second pass over the injected pod patched it again: %s", again.Patch)
			}
		})
	}
}

// compareGolden compares the patch, indented, with testdata/golden/<name>.json.
func compareGolden(t *testing.T, name string, patch []byte) {
	t.Helper()
	got := []byte("[]\n")
	if len(patch) > 0 {
		var buf bytes.Buffer
		if err := json.Indent(&buf, patch, "", "  "); err != nil {
			t.Fatalf("patch is not JSON: %v", err)
		}
		buf.WriteByte('\n')
		got = buf.Bytes()
	}
	path := filepath.Join("testdata", "golden", name+".json")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./webhook/inject -run TestGoldenPatches -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("patch differs from %s (rerun with -update if intended):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func applyPatch(t *testing.T, raw, patch []byte) []byte {
	t.Helper()
	p, err := jsonpatchapply.DecodePatch(patch)
	if err != nil {
		t.Fatalf("patch does not decode: %v\n%s", err, patch)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("patch does not apply to the request's pod: %v\n%s", err, patch)
	}
	return out
}

func checkWarnings(t *testing.T, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("warnings %q, want %d matching %q", got, len(want), want)
		return
	}
	for i := range got {
		if !strings.HasPrefix(got[i], warningPrefix) || !strings.Contains(got[i], want[i]) {
			t.Errorf("warning %d = %q, want %q containing %q", i, got[i], warningPrefix, want[i])
		}
	}
}

func checkEvent(t *testing.T, rec *captureRecorder, gc goldenCase) {
	t.Helper()
	events := rec.recorded()
	if gc.event == "" {
		if len(events) != 0 {
			t.Errorf("unexpected events %+v", events)
		}
		return
	}
	if len(events) != 1 {
		t.Fatalf("got %d events %+v, want one %s", len(events), events, gc.event)
	}
	e := events[0]
	wantType := corev1.EventTypeNormal
	if gc.reason == ReasonSidecarWouldNotEnd {
		wantType = corev1.EventTypeWarning // the owner has to act for the pod to be monitored
	}
	if e.eventtype != wantType || e.reason != gc.event {
		t.Errorf("event %s %s, want %s %s", e.eventtype, e.reason, wantType, gc.event)
	}
	if gc.event == kwv1.ReasonInjectionSkipped && !strings.Contains(e.note, gc.reason) {
		t.Errorf("skip event note %q does not name the reason %s", e.note, gc.reason)
	}
	if gc.event == kwv1.ReasonInjected {
		kind := "a sidecar container"
		if gc.native {
			kind = "a native sidecar"
		}
		if want := "injected kong-watcher agent v1.2.3 as " + kind; !strings.HasPrefix(e.note, want) {
			t.Errorf("event note %q, want prefix %q", e.note, want)
		}
	}
	pod := decodeTestPod(t, podJSON(t, gc.pod))
	owner := pod.OwnerReferences[0]
	if r := e.regarding; r == nil || r.Kind != owner.Kind || r.Name != owner.Name || r.UID != owner.UID ||
		r.APIVersion != owner.APIVersion || r.Namespace != gc.namespace {
		t.Errorf("event regarding %+v, want the pod's owner %+v in namespace %s", r, owner, gc.namespace)
	}
}

// checkInjected verifies the properties the agent relies on, independently of the golden text.
func checkInjected(t *testing.T, before, after *corev1.Pod, cfg Config, native bool) {
	t.Helper()
	if after.Spec.ShareProcessNamespace == nil || !*after.Spec.ShareProcessNamespace {
		t.Error("shareProcessNamespace not true")
	}
	if got := after.Annotations[kwv1.AnnotationInjected]; got != cfg.AgentVersion {
		t.Errorf("%s = %q, want %q", kwv1.AnnotationInjected, got, cfg.AgentVersion)
	}
	for k, v := range before.Annotations {
		if after.Annotations[k] != v {
			t.Errorf("annotation %s changed from %q to %q", k, v, after.Annotations[k])
		}
	}
	if !hasPrometheusAnnotation(before.Annotations) && !before.Spec.HostNetwork {
		if after.Annotations[AnnotationPrometheusPort] != strconv.Itoa(int(cfg.MetricsPort)) ||
			after.Annotations[AnnotationPrometheusScrape] != "true" || after.Annotations[AnnotationPrometheusPath] != "/metrics" {
			t.Errorf("prometheus annotations missing: %v", after.Annotations)
		}
	}

	// The agent is appended, once, after the user's containers, which are untouched.
	list, other := after.Spec.Containers, after.Spec.InitContainers
	orig, origOther := before.Spec.Containers, before.Spec.InitContainers
	if native {
		list, other, orig, origOther = other, list, origOther, orig
	}
	if len(list) != len(orig)+1 || len(other) != len(origOther) {
		t.Fatalf("container counts: %d+%d after, %d+%d before", len(list), len(other), len(orig), len(origOther))
	}
	for i := range orig {
		if list[i].Name != orig[i].Name {
			t.Errorf("container %d is %s, was %s", i, list[i].Name, orig[i].Name)
		}
	}
	agent := list[len(list)-1]
	if agent.Name != kwv1.AgentContainerName || agent.Image != cfg.Image || agent.ImagePullPolicy != cfg.PullPolicy {
		t.Errorf("agent container %s image %s policy %s", agent.Name, agent.Image, agent.ImagePullPolicy)
	}
	if native != (agent.RestartPolicy != nil && *agent.RestartPolicy == corev1.ContainerRestartPolicyAlways) {
		t.Errorf("native=%v but restartPolicy=%v", native, agent.RestartPolicy)
	}
	if agent.StartupProbe != nil {
		t.Error("a startupProbe would hold Kong's containers back")
	}
	// No kubelet readiness probe: a native sidecar's readiness gates the pod's Ready
	// condition, and monitoring must never take Kong out of its Service.
	// condition, and a liveness restart makes it NotReady too: monitoring must never take
	// Kong out of its Service.
	if agent.ReadinessProbe != nil || agent.LivenessProbe != nil {
		t.Errorf("probes: readiness %+v liveness %+v, want none", agent.ReadinessProbe, agent.LivenessProbe)
	}
	wantAddr := fmt.Sprintf(":%d", cfg.MetricsPort)
	if before.Spec.HostNetwork {
		// The node's network: loopback only, and no containerPort (it would be a host port).
		wantAddr = fmt.Sprintf("127.0.0.1:%d", cfg.MetricsPort)
		if len(agent.Ports) != 0 {
			t.Errorf("hostNetwork pod: ports %+v, want none", agent.Ports)
		}
		if hasPrometheusAnnotation(after.Annotations) {
			t.Errorf("hostNetwork pod: scrape annotations %v for a loopback-only endpoint", after.Annotations)
		}
	} else if len(agent.Ports) != 1 || agent.Ports[0].Name != kwv1.MetricsPortName || agent.Ports[0].ContainerPort != cfg.MetricsPort {
		t.Errorf("ports %+v", agent.Ports)
	}
	switch {
	case before.Spec.Resources != nil:
		if len(agent.Resources.Requests) != 0 || len(agent.Resources.Limits) != 0 {
			t.Errorf("pod-level resources: agent resources %+v, want none of its own", agent.Resources)
		}
	case guaranteed(before):
		if !apiequality.Semantic.DeepEqual(agent.Resources.Requests, cfg.Resources.Limits) ||
			!apiequality.Semantic.DeepEqual(agent.Resources.Limits, cfg.Resources.Limits) {
			t.Errorf("Guaranteed pod: agent resources %+v, want requests = limits = %v", agent.Resources, cfg.Resources.Limits)
		}
		if !guaranteed(after) {
			t.Error("injection made a Guaranteed pod Burstable")
		}
	default:
		if !apiequality.Semantic.DeepEqual(agent.Resources, cfg.Resources) {
			t.Errorf("resources %+v, want %+v", agent.Resources, cfg.Resources)
		}
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range agent.Env {
		env[e.Name] = e
	}
	if e := env[kwv1.EnvPodName]; e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("POD_NAME %+v", e)
	}
	if e := env[kwv1.EnvPodNamespace]; e.ValueFrom == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("POD_NAMESPACE %+v", e)
	}
	if got := env[kwv1.EnvMetricsAddr].Value; got != wantAddr {
		t.Errorf("METRICS_ADDR %q", got)
	}
	if env[kwv1.EnvSupervise].Value != "true" {
		t.Errorf("%s = %q, want true: a dying agent must restart inside its container", kwv1.EnvSupervise, env[kwv1.EnvSupervise].Value)
	}
	for _, name := range []string{kwv1.EnvLogLevel, kwv1.EnvJSONLog, kwv1.EnvProcessName, kwv1.EnvStatsInterval} {
		if env[name].Value == "" {
			t.Errorf("%s empty", name)
		}
	}
	checkAgentEnv(t, agent.Env)

	sc := agent.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no securityContext")
	}
	if fmt.Sprint(sc.Capabilities.Add) != "[BPF PERFMON SYS_PTRACE]" || fmt.Sprint(sc.Capabilities.Drop) != "[ALL]" {
		t.Errorf("capabilities add %v drop %v", sc.Capabilities.Add, sc.Capabilities.Drop)
	}
	if *sc.Privileged != cfg.Privileged || *sc.AllowPrivilegeEscalation != cfg.Privileged {
		t.Errorf("privileged %v allowPrivilegeEscalation %v with cfg.Privileged %v",
			*sc.Privileged, *sc.AllowPrivilegeEscalation, cfg.Privileged)
	}
	if !*sc.ReadOnlyRootFilesystem || *sc.RunAsUser != 0 || *sc.RunAsNonRoot {
		t.Errorf("readOnlyRootFilesystem/runAsUser/runAsNonRoot %v/%v/%v", *sc.ReadOnlyRootFilesystem, *sc.RunAsUser, *sc.RunAsNonRoot)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeUnconfined {
		t.Errorf("seccomp %+v", sc.SeccompProfile)
	}
	for _, v := range after.Spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("hostPath volume %s", v.Name)
		}
	}
}

// writeFuzzSeed stores body in the committed seed corpus of a fuzz target.
func writeFuzzSeed(t *testing.T, target, name string, body []byte) {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	content := "go test fuzz v1\n[]byte(" + strconv.Quote(string(body)) + ")\n"
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
