package envtest

import (
	"bytes"
	"fmt"
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
	var agent rbacv1.ClusterRole
	objs.get(t, "ClusterRole", "kong-watcher-agent", &agent)
	if !grants(agent.Rules, "", "pods", "patch", "some-pod") || !grants(agent.Rules, "", "events", "create", "") {
		t.Errorf("agent ClusterRole = %+v, want pods get/patch, events create/patch", agent.Rules)
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
	var rb rbacv1.RoleBinding
	objs.get(t, "RoleBinding", "", &rb)
	if rb.RoleRef.Kind != "ClusterRole" || rb.RoleRef.Name != "kong-watcher-agent" {
		t.Errorf("RoleBinding roleRef = %+v, want ClusterRole kong-watcher-agent", rb.RoleRef)
	}
	sa := dep.Spec.Template.Spec.ServiceAccountName
	if len(rb.Subjects) != 1 || rb.Subjects[0].Kind != "ServiceAccount" || rb.Subjects[0].Name != sa ||
		rb.Subjects[0].Namespace != dep.Namespace {
		t.Errorf("RoleBinding subjects = %+v, want the Deployment's ServiceAccount %s/%s", rb.Subjects, dep.Namespace, sa)
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

// TestKustomizeAgentPolicy: config/default renders the agent's ClusterRole with exactly the
// rights the agent needs, and the ValidatingAdmissionPolicy + binding that narrow them
// (TestAgentPolicy exercises them against a real API server).
func TestKustomizeAgentPolicy(t *testing.T) {
	objs := kustomize(t, "default")

	var agent rbacv1.ClusterRole
	objs.get(t, "ClusterRole", "kong-watcher-agent", &agent)
	want := map[string]bool{ // group/resource/verb
		"/pods/get": true, "/pods/patch": true,
		"/events/create": true, "/events/patch": true,
		"events.k8s.io/events/create": true, "events.k8s.io/events/patch": true,
		"kong-watcher.io/agents/report": true, // the policy's marker, not an API resource
	}
	got := map[string]bool{}
	for _, r := range agent.Rules {
		if len(r.ResourceNames) != 0 || len(r.NonResourceURLs) != 0 {
			t.Errorf("agent rule %+v: resourceNames/nonResourceURLs not expected", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got[g+"/"+res+"/"+v] = true
				}
			}
		}
	}
	for k := range want {
		if !got[k] {
			t.Errorf("agent ClusterRole lacks %s", k)
		}
	}
	for k := range got {
		if !want[k] {
			t.Errorf("agent ClusterRole grants %s, more than the agent needs", k)
		}
	}

	const name = "kong-watcher-agent-pod-annotations"
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
	if vap.Spec.ParamKind != nil {
		t.Errorf("policy paramKind = %+v, want none", vap.Spec.ParamKind)
	}
	mc := vap.Spec.MatchConstraints
	if mc == nil || len(mc.ResourceRules) != 1 {
		t.Fatalf("policy matchConstraints = %+v, want one rule", mc)
	}
	rr := mc.ResourceRules[0]
	if strings.Join(rr.APIGroups, ",") != "" || strings.Join(rr.APIVersions, ",") != "v1" ||
		strings.Join(rr.Resources, ",") != "pods" || len(rr.Operations) != 1 || rr.Operations[0] != admissionregistrationv1.Update {
		t.Errorf("policy rule = %+v, want UPDATE of pods (no subresource) only", rr)
	}
	conds := ""
	for _, c := range vap.Spec.MatchConditions {
		conds += c.Expression + "\n"
	}
	for _, want := range []string{"system:serviceaccount:", "check('report')"} {
		if !strings.Contains(conds, want) {
			t.Errorf("policy matchConditions lack %q: %s", want, conds)
		}
	}
	// Every token of an agent identity is judged, a token bound to no pod included (it then
	// may change nothing): the pod-name claim is what the validations check, never a
	// condition for being judged at all.
	if strings.Contains(conds, "authentication.kubernetes.io/pod-name") {
		t.Errorf("policy matchConditions skip tokens without a pod-name claim: %s", conds)
	}
	if len(vap.Spec.Validations) == 0 {
		t.Errorf("policy has no validations")
	}
	if vapb.Spec.PolicyName != name {
		t.Errorf("binding policyName = %q, want %q (namePrefix applied to both)", vapb.Spec.PolicyName, name)
	}
	if len(vapb.Spec.ValidationActions) != 1 || vapb.Spec.ValidationActions[0] != admissionregistrationv1.Deny {
		t.Errorf("binding validationActions = %v, want [Deny]", vapb.Spec.ValidationActions)
	}
	if vapb.Spec.ParamRef != nil || vapb.Spec.MatchResources != nil {
		t.Errorf("binding paramRef %+v matchResources %+v, want neither (the policy scopes itself)", vapb.Spec.ParamRef, vapb.Spec.MatchResources)
	}

	// The Events policy: the same identity, Events about its own pod only.
	const evName = "kong-watcher-agent-events"
	var ev admissionregistrationv1.ValidatingAdmissionPolicy
	objs.get(t, "ValidatingAdmissionPolicy", evName, &ev)
	var evb admissionregistrationv1.ValidatingAdmissionPolicyBinding
	objs.get(t, "ValidatingAdmissionPolicyBinding", evName, &evb)
	for _, kind := range []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		if ns := objs.find(kind, evName).GetNamespace(); ns != "" {
			t.Errorf("%s %s renders with namespace %q", kind, evName, ns)
		}
	}
	if ev.Spec.FailurePolicy == nil || *ev.Spec.FailurePolicy != admissionregistrationv1.Fail ||
		ev.Spec.MatchConstraints == nil || len(ev.Spec.MatchConstraints.ResourceRules) != 1 ||
		strings.Join(ev.Spec.MatchConstraints.ResourceRules[0].Resources, ",") != "events" ||
		ev.Spec.MatchConstraints.MatchPolicy == nil || *ev.Spec.MatchConstraints.MatchPolicy != admissionregistrationv1.Equivalent {
		t.Errorf("events policy = %+v, want failurePolicy Fail, core events, matchPolicy Equivalent", ev.Spec)
	}
	if evb.Spec.PolicyName != evName || len(evb.Spec.ValidationActions) != 1 || evb.Spec.ValidationActions[0] != admissionregistrationv1.Deny {
		t.Errorf("events binding = %+v, want policyName %s, [Deny]", evb.Spec, evName)
	}
}
