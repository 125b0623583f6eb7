// Package helm keeps charts/kong-watcher equal to the kustomize install: it renders both
// (`helm template` and `kubectl kustomize`) and compares every object field by field, with
// the default values against config/default and with each optional part switched on against
// the kustomize overlay that adds it. It also lints the chart, checks that values.schema.json
// refuses a typo'd key and a wrong type and accepts an agent setting's value as api/agentenv
// does, and that every webhook flag the chart can pass is one cmd/webhook accepts.
//
// It needs the helm CLI: KW_HELM=<path> (the Makefile sets it from hack/helm.sh). Without it
// the tests skip, or fail under KW_REQUIRE_INTEGRATION=1.
package helm

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/diff"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

const (
	release   = "kong-watcher"
	namespace = "kong-watcher-system" // the namespace config/default installs into
	chartDir  = "charts/kong-watcher"
)

// helmOnlyLabels are the labels the chart adds to every object's metadata and config/default
// does not: Helm's conventional chart, release and version labels. They identify the Helm
// release (they change with every chart version or release name), not what is installed, so
// kustomize has no equivalent. They are removed from the Helm side only, and only from
// metadata.labels: selectors and pod templates carry none of them and are compared as is.
var helmOnlyLabels = []string{"helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version"}

// toolLabel is set by both tools to their own name (kustomize: "kustomize", the chart:
// "Helm"), so it is removed from both sides' metadata.labels.
const toolLabel = "app.kubernetes.io/managed-by"

func helmBin(t testing.TB) string {
	t.Helper()
	h := os.Getenv("KW_HELM")
	if h == "" {
		fixture.Require(t, false, "KW_HELM is not set (hack/helm.sh builds helm and prints its path)")
	}
	return h
}

func kubectlBin(t testing.TB) string {
	t.Helper()
	k, err := exec.LookPath("kubectl")
	if err != nil {
		fixture.Require(t, false, "kubectl (with its built-in kustomize) is not on PATH")
	}
	return k
}

func run(t testing.TB, dir, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), err
}

// helmTemplate renders the chart as `helm install -n kong-watcher-system` would.
func helmTemplate(t testing.TB, sets ...string) string {
	t.Helper()
	root := fixture.RepoRoot(t)
	args := []string{"template", release, chartDir, "--namespace", namespace}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, err := run(t, root, helmBin(t), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func kustomize(t testing.TB, dir string, args ...string) string {
	t.Helper()
	out, err := run(t, fixture.RepoRoot(t), kubectlBin(t), append([]string{"kustomize", dir}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

type object = map[string]any

func key(o object) string {
	md, _ := o["metadata"].(map[string]any)
	return fmt.Sprintf("%v %v %v/%v", o["apiVersion"], o["kind"], md["namespace"], md["name"])
}

// parse decodes a multi-document YAML stream into objects keyed by apiVersion, kind,
// namespace and name.
func parse(t testing.TB, what, stream string) map[string]object {
	t.Helper()
	out := map[string]object{}
	dec := k8syaml.NewYAMLOrJSONDecoder(strings.NewReader(stream), 4096)
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if len(o) == 0 {
			continue
		}
		k := key(o)
		if _, dup := out[k]; dup {
			t.Fatalf("%s renders %s twice", what, k)
		}
		out[k] = o
	}
	return out
}

// normalizeCEL: kustomize's YAML emitter writes a folded (>-) scalar whose next line is
// more indented with an extra empty line before it, so `kubectl kustomize` (and what
// `kubectl apply -k` sends) has "\n\n" where the source in config/ means "\n". It happens
// in the CEL expressions of the ValidatingAdmissionPolicies, where whitespace means nothing;
// there alone a blank line is compared as a line break.
func normalizeCEL(o object) {
	if o["kind"] != "ValidatingAdmissionPolicy" {
		return
	}
	var walk func(v any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				if s, ok := e.(string); ok && (k == "expression" || k == "messageExpression") {
					for strings.Contains(s, "\n\n") {
						s = strings.ReplaceAll(s, "\n\n", "\n")
					}
					x[k] = s
				} else {
					x[k] = walk(e)
				}
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		}
		return v
	}
	walk(o)
}

func dropLabels(o object, names ...string) {
	md, _ := o["metadata"].(map[string]any)
	labels, _ := md["labels"].(map[string]any)
	for _, n := range names {
		delete(labels, n)
	}
	if labels != nil && len(labels) == 0 {
		delete(md, "labels")
	}
}

// compare checks that the chart renders exactly the kustomize objects, field by field, after
// the label normalisation above. The kustomize Namespace object is expected to be missing from
// the chart: Helm installs into the release namespace (`helm install -n kong-watcher-system
// --create-namespace`), and a chart that also templated it would clash with
// --create-namespace and be deleted, with everything in it, by `helm uninstall`.
func compare(t *testing.T, helmOut, kustOut string) {
	t.Helper()
	h := parse(t, "helm template", helmOut)
	k := parse(t, "kubectl kustomize", kustOut)

	nsKey := "v1 Namespace <nil>/" + namespace
	if _, ok := k[nsKey]; !ok {
		t.Fatalf("kustomize no longer renders the Namespace %s: the comparison's one exception must be revisited", namespace)
	}
	delete(k, nsKey)
	for key, o := range h {
		if o["kind"] == "Namespace" {
			t.Errorf("the chart renders %s: it must install into the release namespace instead", key)
		}
		dropLabels(o, append(slices.Clone(helmOnlyLabels), toolLabel)...)
		normalizeCEL(o)
	}
	for _, o := range k {
		dropLabels(o, toolLabel)
		normalizeCEL(o)
	}

	var keys []string
	for key := range k {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	for _, key := range keys {
		ho, ok := h[key]
		if !ok {
			t.Errorf("kustomize renders %s, the chart does not", key)
			continue
		}
		if !reflect.DeepEqual(ho, k[key]) {
			t.Errorf("%s differs (- chart, + kustomize):\n%s", key, diff.Diff(ho, k[key]))
		}
	}
	for key := range h {
		if _, ok := k[key]; !ok {
			t.Errorf("the chart renders %s, kustomize does not", key)
		}
	}
	t.Logf("compared %d objects field by field (plus the Namespace kustomize renders and Helm leaves to --create-namespace)", len(keys))
}

func TestDefaultEqualsKustomize(t *testing.T) {
	compare(t, helmTemplate(t), kustomize(t, "config/default"))
}

func TestCertManagerEqualsOverlay(t *testing.T) {
	compare(t, helmTemplate(t, "certManager.enabled=true"), kustomize(t, "config/certmanager"))
}

// config/default adds the PodMonitor when its `#- ../prometheus` line is uncommented: the test
// does exactly that in a copy of config/.
func TestPodMonitorEqualsKustomize(t *testing.T) {
	root := fixture.RepoRoot(t)
	tmp := t.TempDir()
	cfg := filepath.Join(tmp, "config")
	if err := os.CopyFS(cfg, os.DirFS(filepath.Join(root, "config"))); err != nil {
		t.Fatal(err)
	}
	kf := filepath.Join(cfg, "default", "kustomization.yaml")
	b, err := os.ReadFile(kf)
	if err != nil {
		t.Fatal(err)
	}
	const commented = "#- ../prometheus\n"
	if !bytes.Contains(b, []byte(commented)) {
		t.Fatalf("%s no longer has the line %q this test uncomments", "config/default/kustomization.yaml", commented)
	}
	if err := os.WriteFile(kf, bytes.Replace(b, []byte(commented), []byte("- ../prometheus\n"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	compare(t, helmTemplate(t, "podMonitor.enabled=true"), kustomize(t, filepath.Join(cfg, "default")))
}

// config/grafana is applied on its own, into the namespace Grafana's sidecar watches
// (`kubectl apply -k config/grafana -n <ns>`); the chart puts it into the release namespace
// unless grafanaDashboard.namespace says otherwise.
func TestGrafanaDashboardEqualsKustomize(t *testing.T) {
	grafana := parse(t, "kubectl kustomize config/grafana", kustomize(t, "config/grafana"))
	var docs []string
	for _, o := range grafana {
		o["metadata"].(map[string]any)["namespace"] = namespace
		b, err := yamlMarshal(o)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, b)
	}
	compare(t, helmTemplate(t, "grafanaDashboard.enabled=true"), kustomize(t, "config/default")+"\n---\n"+strings.Join(docs, "\n---\n"))

	other := parse(t, "helm template", helmTemplate(t, "grafanaDashboard.enabled=true", "grafanaDashboard.namespace=monitoring"))
	if _, ok := other["v1 ConfigMap monitoring/kong-watcher-dashboard"]; !ok {
		t.Error("grafanaDashboard.namespace=monitoring does not put the ConfigMap into monitoring")
	}
}

// The chart cannot read files outside its directory (and a symlink would not survive every
// way a chart travels: packaging on a checkout without symlinks, some GitOps tools), so it
// carries a copy of the dashboard; this keeps the copy identical.
func TestDashboardCopyIdentical(t *testing.T) {
	root := fixture.RepoRoot(t)
	src, err := os.ReadFile(filepath.Join(root, "config/grafana/kong-watcher-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := os.ReadFile(filepath.Join(root, chartDir, "dashboards/kong-watcher-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src, cp) {
		t.Fatalf("%s/dashboards/kong-watcher-dashboard.json differs from config/grafana/kong-watcher-dashboard.json; "+
			"config/grafana is the source: cp config/grafana/kong-watcher-dashboard.json %s/dashboards/", chartDir, chartDir)
	}
}

func TestLint(t *testing.T) {
	out, err := run(t, fixture.RepoRoot(t), helmBin(t), "lint", "--strict", chartDir)
	t.Logf("helm lint --strict %s:\n%s", chartDir, out)
	if err != nil {
		t.Fatal(err)
	}
	for _, sets := range [][]string{
		{"certManager.enabled=true"},
		{"podMonitor.enabled=true", "grafanaDashboard.enabled=true"},
	} {
		args := []string{"lint", "--strict", chartDir}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		if out, err := run(t, fixture.RepoRoot(t), helmBin(t), args...); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	}
}

func TestSchemaRejects(t *testing.T) {
	for _, c := range []struct {
		name, flag, set, want string
	}{
		{"typo'd top-level key", "--set", "replicaCuont=3", "replicaCuont"},
		{"typo'd nested key", "--set", "agent.statsIntreval=10s", "statsIntreval"},
		{"wrong type", "--set-string", "replicaCount=two", "replicaCount"},
		{"wrong type of an agent switch", "--set-string", "agent.jsonLog=yes", "jsonLog"},
		{"not a duration", "--set", "agent.statsInterval=soon", "statsInterval"},
		{"unknown log level", "--set", "agent.logLevel=verbose", "logLevel"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, cmd := range [][]string{
				{"template", release, chartDir, "-n", namespace},
				{"install", release, chartDir, "-n", namespace, "--dry-run=client"},
			} {
				out, err := run(t, fixture.RepoRoot(t), helmBin(t), append(cmd, c.flag, c.set)...)
				if err == nil {
					t.Fatalf("helm %s %s %s succeeded:\n%.300s", cmd[0], c.flag, c.set, out)
				}
				if !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), c.want) {
					t.Errorf("helm %s %s %s failed, but not naming the schema and %q: %v", cmd[0], c.flag, c.set, c.want, err)
				}
			}
		})
	}
}

// Every value that becomes a webhook flag renders to a flag cmd/webhook registers, with a
// value it accepts.
func TestValuesBecomeWebhookFlags(t *testing.T) {
	sets := []string{
		"replicaCount=3",
		"image.repository=registry.example.com/kw/webhook", "image.tag=v1.2.3", "image.pullPolicy=IfNotPresent",
		"agent.image.repository=registry.example.com/kw/agent", "agent.image.tag=v1.2.3", "agent.image.pullPolicy=Always",
		"agent.resources.requests.cpu=150m", "agent.resources.requests.memory=100Mi",
		"agent.resources.limits.cpu=1", "agent.resources.limits.memory=1Gi",
		"agent.logLevel=debug", "agent.jsonLog=false", "agent.processName=nginx",
		"agent.statsInterval=10s", "agent.nativeSidecar=false", "agent.privileged=true",
		"verifyInjectedPods=false", "excludedNamespaces={kube-system,istio-system}",
		"agent.highErrorRateThreshold=2%", "agent.highLatencyP99Ms=250", "agent.alertMinRequests=40",
	}
	objs := parse(t, "helm template", helmTemplate(t, sets...))
	dep := objs["apps/v1 Deployment "+namespace+"/kong-watcher-webhook"]
	if dep == nil {
		t.Fatal("no webhook Deployment rendered")
	}
	b, err := yamlMarshal(dep)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Spec struct {
			Replicas int `json:"replicas"`
			Template struct {
				Spec struct {
					Containers []struct {
						Image           string   `json:"image"`
						ImagePullPolicy string   `json:"imagePullPolicy"`
						Args            []string `json:"args"`
						Env             []struct {
							Name, Value string
						} `json:"env"`
					} `json:"containers"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := yamlUnmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if d.Spec.Replicas != 3 || c.Image != "registry.example.com/kw/webhook:v1.2.3" || c.ImagePullPolicy != "IfNotPresent" {
		t.Errorf("replicas %d, image %s, pull policy %q", d.Spec.Replicas, c.Image, c.ImagePullPolicy)
	}
	var agentImage string
	for _, e := range c.Env {
		if e.Name == app.EnvAgentImage {
			agentImage = e.Value
		}
	}
	if agentImage != "registry.example.com/kw/agent:v1.2.3" {
		t.Errorf("%s=%q", app.EnvAgentImage, agentImage)
	}

	t.Setenv(app.EnvAgentImage, agentImage)
	t.Setenv(app.EnvPodNamespace, namespace)
	opts := app.NewOptions()
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	opts.BindFlags(fs)
	if err := fs.Parse(c.Args); err != nil {
		t.Fatalf("cmd/webhook refuses the chart's args %q: %v", c.Args, err)
	}
	if err := opts.Complete(); err != nil {
		t.Fatalf("cmd/webhook refuses the chart's args %q: %v", c.Args, err)
	}
	a := opts.Agent
	if a.LogLevel != "debug" || a.JSONLog || a.StatsInterval.String() != "10s" || a.NativeSidecar || !a.Privileged ||
		string(a.PullPolicy) != "Always" || opts.VerifyInjectedPods {
		t.Errorf("agent settings did not reach the webhook: %+v (verify %v)", a, opts.VerifyInjectedPods)
	}
	if a.HighErrorRateThreshold != "2%" || a.HighLatencyP99Ms != "250" || a.AlertMinRequests != "40" {
		t.Errorf("alert thresholds did not reach the webhook: %q %q %q", a.HighErrorRateThreshold, a.HighLatencyP99Ms, a.AlertMinRequests)
	}
	if got := a.Resources.Requests.Cpu().String() + " " + a.Resources.Requests.Memory().String() + " " +
		a.Resources.Limits.Cpu().String() + " " + a.Resources.Limits.Memory().String(); got != "150m 100Mi 1 1Gi" {
		t.Errorf("agent resources %s", got)
	}
	if !slices.Contains(a.ExcludedNamespaces, "istio-system") {
		t.Errorf("excluded namespaces %v", a.ExcludedNamespaces)
	}
	mwc := objs["admissionregistration.k8s.io/v1 MutatingWebhookConfiguration <nil>/kong-watcher-mutating-webhook-configuration"]
	if s := fmt.Sprint(mwc["webhooks"]); !strings.Contains(s, "istio-system") || !strings.Contains(s, namespace) {
		t.Errorf("namespaceSelector does not exclude istio-system and %s: %s", namespace, s)
	}
}

func yamlMarshal(o any) (string, error) {
	b, err := sigsyaml.Marshal(o)
	return string(b), err
}

func yamlUnmarshal(s string, into any) error { return sigsyaml.Unmarshal([]byte(s), into) }
