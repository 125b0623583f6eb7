package envtest

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"
	"github.com/kong-watcher/kong-watcher/webhook/inject"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// rendered is one `kubectl kustomize` output, split into objects.
type rendered []*unstructured.Unstructured

// kustomize renders config/<dir> with the kubectl on PATH (kustomize v5). A missing kubectl
// fails the test under KW_REQUIRE_INTEGRATION=1, else skips it.
func kustomize(t *testing.T, dir string) rendered {
	t.Helper()
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		fixture.Require(t, false, "kubectl not on PATH")
	}
	cmd := exec.Command(kubectl, "kustomize", filepath.Join(fixture.RepoRoot(t), "config", dir))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize config/%s: %v\n%s", dir, err, stderr.String())
	}
	var objs rendered
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("decoding config/%s: %v", dir, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
	return objs
}

func (r rendered) find(kind, name string) *unstructured.Unstructured {
	for _, u := range r {
		if u.GetKind() == kind && (name == "" || u.GetName() == name) {
			return u
		}
	}
	return nil
}

// get converts the object of kind/name into out, failing when it is missing.
func (r rendered) get(t *testing.T, kind, name string, out any) {
	t.Helper()
	u := r.find(kind, name)
	if u == nil {
		t.Fatalf("no %s %q rendered", kind, name)
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, out); err != nil {
		t.Fatalf("converting %s %s: %v", kind, name, err)
	}
}

func TestKustomizeDefault(t *testing.T) {
	objs := kustomize(t, "default")

	for _, u := range objs {
		if ns := u.GetNamespace(); ns != "" && ns != app.DefaultNamespace {
			t.Errorf("%s %s in namespace %q, want %q", u.GetKind(), u.GetName(), ns, app.DefaultNamespace)
		}
	}
	if objs.find("Namespace", app.DefaultNamespace) == nil {
		t.Errorf("Namespace %s not rendered", app.DefaultNamespace)
	}

	// The names the binary uses by default are the rendered ones.
	var svc corev1.Service
	objs.get(t, "Service", app.DefaultServiceName, &svc)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 443 || svc.Spec.Ports[0].TargetPort.String() != "webhook-server" {
		t.Errorf("Service ports = %+v, want 443 -> webhook-server", svc.Spec.Ports)
	}
	if objs.find("Secret", app.DefaultSecretName) == nil {
		t.Errorf("Secret %s (rotator's) not rendered", app.DefaultSecretName)
	}

	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	objs.get(t, "MutatingWebhookConfiguration", app.DefaultWebhookConfigName, &mwc)
	if len(mwc.Webhooks) != 1 {
		t.Fatalf("%d webhooks, want 1", len(mwc.Webhooks))
	}
	wh := mwc.Webhooks[0]
	cc := wh.ClientConfig.Service
	if cc == nil || cc.Name != app.DefaultServiceName || cc.Namespace != app.DefaultNamespace ||
		cc.Path == nil || *cc.Path != inject.Path || cc.Port == nil || *cc.Port != 443 {
		t.Errorf("clientConfig.service = %+v, want %s/%s:443%s", cc, app.DefaultNamespace, app.DefaultServiceName, inject.Path)
	}
	if len(wh.Rules) != 1 || len(wh.Rules[0].Operations) != 1 || wh.Rules[0].Operations[0] != admissionregistrationv1.Create ||
		strings.Join(wh.Rules[0].Resources, ",") != "pods" || strings.Join(wh.Rules[0].APIGroups, ",") != "" ||
		strings.Join(wh.Rules[0].APIVersions, ",") != "v1" {
		t.Errorf("rules = %+v, want pods v1 CREATE only", wh.Rules)
	}
	if wh.ObjectSelector == nil || wh.ObjectSelector.MatchLabels["kong-watcher.io/inject"] != "true" {
		t.Errorf("objectSelector = %+v, want kong-watcher.io/inject=true", wh.ObjectSelector)
	}
	nsSel := wh.NamespaceSelector
	if nsSel == nil || len(nsSel.MatchExpressions) != 1 || nsSel.MatchExpressions[0].Key != "kubernetes.io/metadata.name" ||
		nsSel.MatchExpressions[0].Operator != "NotIn" ||
		strings.Join(nsSel.MatchExpressions[0].Values, ",") != "kube-system,"+app.DefaultNamespace {
		t.Errorf("namespaceSelector = %+v, want metadata.name NotIn [kube-system %s]", nsSel, app.DefaultNamespace)
	}
	if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Ignore {
		t.Errorf("failurePolicy = %v, want Ignore", deref(wh.FailurePolicy))
	}
	if wh.SideEffects == nil || (*wh.SideEffects != admissionregistrationv1.SideEffectClassNone &&
		*wh.SideEffects != admissionregistrationv1.SideEffectClassNoneOnDryRun) {
		t.Errorf("sideEffects = %v, want None or NoneOnDryRun", deref(wh.SideEffects))
	}
	if wh.ReinvocationPolicy == nil || *wh.ReinvocationPolicy != admissionregistrationv1.IfNeededReinvocationPolicy {
		t.Errorf("reinvocationPolicy = %v, want IfNeeded", deref(wh.ReinvocationPolicy))
	}
	if wh.TimeoutSeconds == nil || *wh.TimeoutSeconds != 5 {
		t.Errorf("timeoutSeconds = %v, want 5", deref(wh.TimeoutSeconds))
	}
	if strings.Join(wh.AdmissionReviewVersions, ",") != "v1" {
		t.Errorf("admissionReviewVersions = %v, want [v1]", wh.AdmissionReviewVersions)
	}

	var dep appsv1.Deployment
	objs.get(t, "Deployment", "kong-watcher-webhook", &dep)
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Errorf("replicas = %v, want 2", deref(dep.Spec.Replicas))
	}
	pod := dep.Spec.Template.Spec
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot ||
		pod.SecurityContext.SeccompProfile == nil || pod.SecurityContext.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v, want runAsNonRoot + seccomp RuntimeDefault", pod.SecurityContext)
	}
	if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil ||
		len(pod.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Errorf("no preferred podAntiAffinity")
	}
	if pod.ServiceAccountName != "kong-watcher-webhook" {
		t.Errorf("serviceAccountName = %q", pod.ServiceAccountName)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 {
		t.Errorf("container securityContext = %+v, want readOnlyRootFilesystem, no privilege escalation, drop ALL", sc)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
		c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("probes: liveness %+v readiness %+v", c.LivenessProbe, c.ReadinessProbe)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources not set: %+v", c.Resources)
	}
	if c.Image != "kong-watcher/webhook:latest" {
		t.Errorf("image = %q", c.Image)
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if e := env[app.EnvPodNamespace]; e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("env %s = %+v, want the downward API metadata.namespace", app.EnvPodNamespace, e)
	}
	if e := env[app.EnvAgentImage]; e.Value != "kong-watcher/agent:latest" {
		t.Errorf("env %s = %q", app.EnvAgentImage, e.Value)
	}
	certPath := ""
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--webhook-cert-path="); ok {
			certPath = v
		}
		if strings.HasPrefix(a, "--disable-cert-rotation") {
			t.Errorf("config/default must use the built-in rotator, got %s", a)
		}
	}
	mounted := ""
	for _, m := range c.VolumeMounts {
		if m.MountPath == certPath {
			mounted = m.Name
		}
	}
	if certPath == "" || mounted == "" {
		t.Errorf("--webhook-cert-path=%q is not a volume mount (%+v)", certPath, c.VolumeMounts)
	}
	for _, v := range pod.Volumes {
		if v.Name == mounted && v.EmptyDir == nil {
			t.Errorf("cert volume %q is not an emptyDir: %+v", v.Name, v.VolumeSource)
		}
	}

	u := objs.find("PodDisruptionBudget", "kong-watcher-webhook")
	if u == nil {
		t.Fatalf("no PodDisruptionBudget")
	}
	// Decoded through JSON, so the number is a float64; an intstr may also be a string.
	if v, found, _ := unstructured.NestedFieldNoCopy(u.Object, "spec", "minAvailable"); !found || fmt.Sprint(v) != "1" {
		t.Errorf("PDB minAvailable = %v (found %v), want 1", v, found)
	}

	// RBAC: the rotator may update exactly the rendered Secret and webhook configuration.
	var certRole rbacv1.Role
	objs.get(t, "Role", "kong-watcher-webhook-cert-role", &certRole)
	if !grants(certRole.Rules, "", "secrets", "update", app.DefaultSecretName) {
		t.Errorf("cert Role does not grant update on secret %s: %+v", app.DefaultSecretName, certRole.Rules)
	}
	var cr rbacv1.ClusterRole
	objs.get(t, "ClusterRole", "kong-watcher-webhook-role", &cr)
	if !grants(cr.Rules, "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "update", app.DefaultWebhookConfigName) {
		t.Errorf("ClusterRole does not grant update on %s: %+v", app.DefaultWebhookConfigName, cr.Rules)
	}
	if !grants(cr.Rules, "events.k8s.io", "events", "create", "") {
		t.Errorf("ClusterRole does not grant events create: %+v", cr.Rules)
	}
	if !grants(cr.Rules, "authentication.k8s.io", "tokenreviews", "create", "") || !grants(cr.Rules, "", "pods", "patch", "some-pod") {
		t.Errorf("ClusterRole does not grant the report endpoint's rights (tokenreviews create, pods patch): %+v", cr.Rules)
	}
}

// checkBinding checks that the ClusterRoleBinding name binds role to the manager's service
// account only.
func checkBinding(t *testing.T, objs rendered, name, role string) {
	t.Helper()
	var crb rbacv1.ClusterRoleBinding
	objs.get(t, "ClusterRoleBinding", name, &crb)
	if crb.RoleRef.Name != role || len(crb.Subjects) != 1 || crb.Subjects[0].Kind != "ServiceAccount" ||
		crb.Subjects[0].Name != "kong-watcher-webhook" || crb.Subjects[0].Namespace != app.DefaultNamespace {
		t.Errorf("ClusterRoleBinding %s = %+v, want %s for the manager's service account only", name, crb, role)
	}
}

// TestKustomizeBefore130: the overlay for API servers without ValidatingAdmissionPolicy renders
// config/default less the policies and the right that only a policy confines (create pods),
// and starts the webhook without the dry runs that right was for.
func TestKustomizeBefore130(t *testing.T) {
	def, objs := kustomize(t, "default"), kustomize(t, "before-1.30")
	gone := map[string]bool{
		"ClusterRole/kong-watcher-webhook-dry-run-role":               true,
		"ClusterRoleBinding/kong-watcher-webhook-dry-run-rolebinding": true,
	}
	for _, u := range def {
		if strings.HasPrefix(u.GetKind(), "ValidatingAdmissionPolicy") {
			gone[u.GetKind()+"/"+u.GetName()] = true
		}
	}
	if len(gone) != 2+6 {
		t.Fatalf("config/default renders %d policies and bindings, want 6: revisit config/before-1.30", len(gone)-2)
	}
	kept := map[string]bool{}
	for _, u := range objs {
		k := u.GetKind() + "/" + u.GetName()
		kept[k] = true
		if gone[k] || strings.HasPrefix(u.GetKind(), "ValidatingAdmissionPolicy") {
			t.Errorf("config/before-1.30 renders %s", k)
		}
		if u.GetKind() == "ClusterRole" || u.GetKind() == "Role" {
			var r rbacv1.ClusterRole
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &r); err != nil {
				t.Fatal(err)
			}
			if grants(r.Rules, "", "pods", "create", "") {
				t.Errorf("config/before-1.30: %s grants create on pods", k)
			}
		}
	}
	for _, u := range def {
		if k := u.GetKind() + "/" + u.GetName(); !gone[k] && !kept[k] {
			t.Errorf("config/before-1.30 lacks %s", k)
		}
	}
	var d appsv1.Deployment
	objs.get(t, "Deployment", "kong-watcher-webhook", &d)
	o := app.NewOptions()
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.BindFlags(fs)
	if err := fs.Parse(d.Spec.Template.Spec.Containers[0].Args); err != nil {
		t.Fatal(err)
	}
	if o.VerifyInjectedPods {
		t.Errorf("config/before-1.30 starts the webhook with --verify-injected-pods: it has no right to dry-run pods")
	}
}

// deref prints a pointer's value ("<nil>" when unset).
func deref[T any](p *T) any {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// grants reports whether rules allow verb on group/resource (named name, if not empty).
func grants(rules []rbacv1.PolicyRule, group, resource, verb, name string) bool {
	has := func(l []string, s string) bool {
		for _, x := range l {
			if x == s || x == "*" {
				return true
			}
		}
		return false
	}
	for _, r := range rules {
		if has(r.APIGroups, group) && has(r.Resources, resource) && has(r.Verbs, verb) &&
			(len(r.ResourceNames) == 0 || (name != "" && has(r.ResourceNames, name))) {
			return true
		}
	}
	return false
}

// TestKustomizeImagesOverlay: a user overlay's `images:` changes both the webhook image and
// the agent image (carried in AGENT_IMAGE), as config/default documents.
func TestKustomizeImagesOverlay(t *testing.T) {
	root := fixture.RepoRoot(t)
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, filepath.Join(root, "config", "default"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "kustomization.yaml"), "resources:\n- "+rel+"\n"+
		"images:\n- name: kong-watcher/agent\n  newName: registry.example.com/kw/agent\n  newTag: v9.9.9\n"+
		"- name: kong-watcher/webhook\n  newName: registry.example.com/kw/webhook\n  newTag: v9.9.9\n")
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		fixture.Require(t, false, "kubectl not on PATH")
	}
	out, err := exec.Command(kubectl, "kustomize", "--load-restrictor=LoadRestrictionsNone", dir).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize overlay: %v\n%s", err, out)
	}
	s := string(out)
	for _, want := range []string{"image: registry.example.com/kw/webhook:v9.9.9", "value: registry.example.com/kw/agent:v9.9.9"} {
		if !strings.Contains(s, want) {
			t.Errorf("overlay output lacks %q", want)
		}
	}
	if strings.Contains(s, "kong-watcher/agent:latest") {
		t.Errorf("agent image not rewritten by images:")
	}
}

func TestKustomizeCertManager(t *testing.T) {
	objs := kustomize(t, "certmanager")
	var dep appsv1.Deployment
	objs.get(t, "Deployment", "kong-watcher-webhook", &dep)
	c := dep.Spec.Template.Spec.Containers[0]
	if !strings.Contains(strings.Join(c.Args, " "), "--disable-cert-rotation") {
		t.Errorf("args %v lack --disable-cert-rotation", c.Args)
	}
	var certVol *corev1.Volume
	for i, v := range dep.Spec.Template.Spec.Volumes {
		if v.Name == "cert" {
			certVol = &dep.Spec.Template.Spec.Volumes[i]
		}
	}
	if certVol == nil || certVol.Secret == nil || certVol.EmptyDir != nil {
		t.Errorf("cert volume = %+v, want only the cert-manager Secret", certVol)
	}
	certU := objs.find("Certificate", "")
	if certU == nil {
		t.Fatal("no Certificate")
	}
	secretName, _, _ := unstructured.NestedString(certU.Object, "spec", "secretName")
	if certVol != nil && certVol.Secret != nil && certVol.Secret.SecretName != secretName {
		t.Errorf("volume mounts secret %q, Certificate writes %q", certVol.Secret.SecretName, secretName)
	}
	dns, _, _ := unstructured.NestedStringSlice(certU.Object, "spec", "dnsNames")
	if len(dns) == 0 || dns[0] != app.DefaultServiceName+"."+app.DefaultNamespace+".svc" {
		t.Errorf("Certificate dnsNames = %v", dns)
	}
	mwc := objs.find("MutatingWebhookConfiguration", app.DefaultWebhookConfigName)
	if mwc == nil {
		t.Fatal("no MutatingWebhookConfiguration")
	}
	want := app.DefaultNamespace + "/" + certU.GetName()
	if got := mwc.GetAnnotations()["cert-manager.io/inject-ca-from"]; got != want {
		t.Errorf("inject-ca-from = %q, want %q", got, want)
	}
	if objs.find("Secret", app.DefaultSecretName) != nil {
		t.Errorf("the rotator's Secret is still rendered in the cert-manager overlay")
	}
	if objs.find("Issuer", "") == nil {
		t.Errorf("no Issuer")
	}
}

func TestKustomizeSamples(t *testing.T) {
	objs := kustomize(t, "samples")
	var dep appsv1.Deployment
	objs.get(t, "Deployment", "", &dep)
	if dep.Spec.Template.Labels["kong-watcher.io/inject"] != "true" {
		t.Errorf("sample pod template labels = %v, want kong-watcher.io/inject=true", dep.Spec.Template.Labels)
	}
	// Kong's service account needs nothing: the agent reports through the manager.
	for _, kind := range []string{"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} {
		if u := objs.find(kind, ""); u != nil {
			t.Errorf("samples render %s %s: Kong's service account must need no rights", kind, u.GetName())
		}
	}
	if objs.find("Service", "") == nil {
		t.Errorf("no Service in samples")
	}
	// The prometheus overlay renders too (its CRD is not needed to render).
	pm := kustomize(t, "prometheus").find("PodMonitor", "")
	if pm == nil {
		t.Fatal("no PodMonitor")
	}
	eps, _, _ := unstructured.NestedSlice(pm.Object, "spec", "podMetricsEndpoints")
	if len(eps) != 1 || eps[0].(map[string]any)["port"] != kwv1.MetricsPortName ||
		eps[0].(map[string]any)["path"] != "/metrics" {
		t.Errorf("PodMonitor endpoints = %v, want port %s path /metrics (the agent's port)", eps, kwv1.MetricsPortName)
	}
	// It selects the injected pods by the opt-in label, in every namespace.
	sel, _, _ := unstructured.NestedStringMap(pm.Object, "spec", "selector", "matchLabels")
	if len(sel) != 1 || sel[kwv1.LabelInject] != kwv1.LabelInjectValue {
		t.Errorf("PodMonitor selector = %v, want %s=%s", sel, kwv1.LabelInject, kwv1.LabelInjectValue)
	}
	if anyNS, _, _ := unstructured.NestedBool(pm.Object, "spec", "namespaceSelector", "any"); !anyNS {
		t.Errorf("PodMonitor namespaceSelector.any is not true")
	}
	if dep.Spec.Template.Labels[kwv1.LabelInject] != kwv1.LabelInjectValue {
		t.Errorf("the sample Deployment's pods do not carry the label the PodMonitor selects")
	}
}

// TestKustomizeManagerRights: config/default renders the manager's ClusterRole with exactly
// the rights it needs (the webhook's, plus writing what agents report: pods and workloads
// patch, ReplicaSets read, TokenReviews), the ValidatingAdmissionPolicy that narrows its
// patches to the statistics annotations (TestManagerMayOnlyWriteStatistics exercises it against
// a real API server), and nothing at all for Kong's service account.
func TestKustomizeManagerRights(t *testing.T) {
	objs := kustomize(t, "default")

	var cr rbacv1.ClusterRole
	objs.get(t, "ClusterRole", "kong-watcher-webhook-role", &cr)
	want := map[string]bool{ // group/resource/verb
		"/events/create": true, "/events/patch": true,
		"events.k8s.io/events/create": true, "events.k8s.io/events/patch": true,
		"admissionregistration.k8s.io/mutatingwebhookconfigurations/get":    true,
		"admissionregistration.k8s.io/mutatingwebhookconfigurations/list":   true,
		"admissionregistration.k8s.io/mutatingwebhookconfigurations/watch":  true,
		"admissionregistration.k8s.io/mutatingwebhookconfigurations/update": true,
		"admissionregistration.k8s.io/mutatingwebhookconfigurations/patch":  true,
		"/pods/get": true, "/pods/list": true, "/pods/watch": true, "/pods/patch": true,
		"apps/replicasets/list": true, "apps/replicasets/watch": true,
		"authentication.k8s.io/tokenreviews/create": true,
		// The statistics policy's marker, not an API resource.
		"kong-watcher.io/reporters/write-statistics": true,
	}
	for _, w := range []string{"deployments", "statefulsets", "daemonsets"} {
		for _, v := range []string{"get", "patch"} {
			want["apps/"+w+"/"+v] = true
		}
	}
	got := map[string]bool{}
	for _, r := range cr.Rules {
		if len(r.NonResourceURLs) != 0 {
			t.Errorf("manager rule %+v: nonResourceURLs not expected", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got[g+"/"+res+"/"+v] = true
					// Only the rotator's writes are limited by name; the rest cannot be.
					if named := len(r.ResourceNames) != 0; named != (res == "mutatingwebhookconfigurations" && (v == "update" || v == "patch")) {
						t.Errorf("manager rule %s/%s/%s: resourceNames %v", g, res, v, r.ResourceNames)
					}
				}
			}
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("manager ClusterRole lacks %s", k)
		}
	}
	for k := range got {
		if !want[k] {
			t.Errorf("manager ClusterRole grants %s, more than the manager needs", k)
		}
	}
	for _, bad := range []string{"delete", "update", "create"} {
		if grants(cr.Rules, "apps", "deployments", bad, "") || grants(cr.Rules, "", "pods", bad, "") {
			t.Errorf("manager ClusterRole may %s pods or deployments", bad)
		}
	}
	checkBinding(t, objs, "kong-watcher-webhook-rolebinding", cr.Name)

	// The dry runs' right to create pods is a role of its own, which the dry-run policy's
	// objects come with (config/before-1.30 leaves all of them out).
	var dr rbacv1.ClusterRole
	objs.get(t, "ClusterRole", "kong-watcher-webhook-dry-run-role", &dr)
	if len(dr.Rules) != 2 || !grants(dr.Rules, "", "pods", "create", "") ||
		!grants(dr.Rules, "kong-watcher.io", "injectors", "dry-run-pods", "") {
		t.Errorf("dry-run ClusterRole rules = %+v, want pods create and the injectors marker only", dr.Rules)
	}
	for _, r := range dr.Rules {
		if len(r.Verbs) != 1 || len(r.Resources) != 1 || len(r.APIGroups) != 1 || len(r.ResourceNames) != 0 {
			t.Errorf("dry-run ClusterRole rule %+v: one group, resource and verb each", r)
		}
	}
	checkBinding(t, objs, "kong-watcher-webhook-dry-run-rolebinding", dr.Name)

	// Kong's service account gets nothing: the only RBAC objects are the manager's, and every
	// binding names the manager's service account in its own namespace.
	for _, u := range objs {
		switch u.GetKind() {
		case "ClusterRole", "Role":
			if strings.Contains(u.GetName(), "agent") {
				t.Errorf("config/default renders %s %s", u.GetKind(), u.GetName())
			}
		case "RoleBinding", "ClusterRoleBinding":
			subjects, _, _ := unstructured.NestedSlice(u.Object, "subjects")
			for _, s := range subjects {
				m, _ := s.(map[string]any)
				if m["kind"] != "ServiceAccount" || m["name"] != "kong-watcher-webhook" || m["namespace"] != app.DefaultNamespace {
					t.Errorf("%s %s binds %v: only the manager's service account may be bound", u.GetKind(), u.GetName(), m)
				}
			}
		}
	}

	const name = "kong-watcher-manager-statistics-only"
	var vap admissionregistrationv1.ValidatingAdmissionPolicy
	objs.get(t, "ValidatingAdmissionPolicy", name, &vap)
	var vapb admissionregistrationv1.ValidatingAdmissionPolicyBinding
	objs.get(t, "ValidatingAdmissionPolicyBinding", name, &vapb)
	for _, kind := range []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		if ns := objs.find(kind, name).GetNamespace(); ns != "" {
			t.Errorf("%s is cluster-scoped but renders with namespace %q", kind, ns)
		}
	}
	if vap.Spec.FailurePolicy == nil || *vap.Spec.FailurePolicy != admissionregistrationv1.Fail {
		t.Errorf("policy failurePolicy = %v, want Fail", deref(vap.Spec.FailurePolicy))
	}
	matched := map[string]bool{}
	if mc := vap.Spec.MatchConstraints; mc != nil {
		for _, rr := range mc.ResourceRules {
			for _, op := range rr.Operations {
				for _, g := range rr.APIGroups {
					for _, res := range rr.Resources {
						matched[string(op)+" "+g+"/"+res] = true
					}
				}
			}
		}
	}
	for _, w := range []string{"UPDATE /pods", "UPDATE apps/deployments", "UPDATE apps/statefulsets", "UPDATE apps/daemonsets"} {
		if !matched[w] {
			t.Errorf("policy does not match %s (matches %v)", w, matched)
		}
	}
	conds := ""
	for _, c := range vap.Spec.MatchConditions {
		conds += c.Expression + "\n"
	}
	for _, w := range []string{"resource('reporters').check('write-statistics')", "kong-watcher-wildcard-probe"} {
		if !strings.Contains(conds, w) {
			t.Errorf("policy matchConditions lack %q: %s", w, conds)
		}
	}
	// The policy's list of statistics annotations is the one the manager writes.
	var listed []string
	for _, v := range vap.Spec.Variables {
		if v.Name == "statistics" {
			for _, part := range strings.Split(v.Expression, "'")[1:] {
				if strings.HasPrefix(part, kwv1.Domain+"/") {
					listed = append(listed, part)
				}
			}
		}
	}
	if strings.Join(listed, ",") != strings.Join(kwv1.ReportedAnnotations, ",") {
		t.Errorf("policy statistics annotations %v, want v1alpha1.ReportedAnnotations %v", listed, kwv1.ReportedAnnotations)
	}
	if len(vap.Spec.Validations) < 3 {
		t.Errorf("policy has %d validations, want spec, metadata and annotations checks", len(vap.Spec.Validations))
	}
	if vapb.Spec.PolicyName != name || len(vapb.Spec.ValidationActions) != 1 || vapb.Spec.ValidationActions[0] != admissionregistrationv1.Deny ||
		vapb.Spec.ParamRef != nil || vapb.Spec.MatchResources != nil {
		t.Errorf("binding = %+v, want policyName %s, [Deny], no paramRef or matchResources", vapb.Spec, name)
	}
}
