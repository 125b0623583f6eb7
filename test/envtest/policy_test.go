package envtest

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
)

const (
	podNameClaim        = "authentication.kubernetes.io/pod-name"
	managerSA           = "kong-watcher-webhook"
	statisticsPolicy    = "kong-watcher-manager-statistics-only"
	statisticsPolicyMsg = "ValidatingAdmissionPolicy '" + statisticsPolicy + "'"
)

// managerClient installs the manager's ServiceAccount, ClusterRole, binding and the statistics
// policy as `kubectl kustomize config/default` renders them, and returns a client with a real
// token of that service account bound to a pod of it (what the kubelet mounts into the manager;
// the pod never runs, envtest has no kubelet). No impersonation: the API server authenticates
// and authorizes exactly the identity the manager has in a cluster.
func managerClient(t *testing.T, ctx context.Context, cfg *rest.Config) *kubernetes.Clientset {
	t.Helper()
	c := newClient(t, cfg)
	admin := kubernetes.NewForConfigOrDie(cfg)
	ensureNamespace(t, c, app.DefaultNamespace)
	applyRendered(t, c,
		[2]string{"ServiceAccount", managerSA},
		[2]string{"ClusterRole", "kong-watcher-webhook-role"},
		[2]string{"ClusterRoleBinding", "kong-watcher-webhook-rolebinding"},
		[2]string{"ValidatingAdmissionPolicy", statisticsPolicy},
		[2]string{"ValidatingAdmissionPolicyBinding", statisticsPolicy})
	pod, err := admin.CoreV1().Pods(app.DefaultNamespace).Get(ctx, "kong-watcher-webhook-0", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		pod, err = admin.CoreV1().Pods(app.DefaultNamespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "kong-watcher-webhook-0"},
			Spec: corev1.PodSpec{ServiceAccountName: managerSA,
				Containers: []corev1.Container{{Name: "manager", Image: "kong-watcher/webhook:envtest"}}},
		}, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatalf("the manager's pod: %v", err)
	}
	return tokenClient(t, ctx, admin, cfg, app.DefaultNamespace, managerSA, pod)
}

// TestManagerMayOnlyWriteStatistics: the manager's identity (its rendered ClusterRole, which
// grants `patch` on pods and workloads to write what agents report) can change the statistics
// annotations and nothing else: not a label, not another annotation (the webhook's
// kong-watcher.io/injected and the user's thresholds included), not the spec. An
// administrator is not constrained, and RBAC alone keeps the manager from deleting pods.
func TestManagerMayOnlyWriteStatistics(t *testing.T) {
	_, cfg := startEnv(t)
	ctx := t.Context()
	c := newClient(t, cfg)
	admin := kubernetes.NewForConfigOrDie(cfg)
	manager := managerClient(t, ctx, cfg)

	rev, err := manager.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	if ui := rev.Status.UserInfo; ui.Username != "system:serviceaccount:"+app.DefaultNamespace+":"+managerSA ||
		strings.Join(ui.Extra[podNameClaim], ",") != "kong-watcher-webhook-0" {
		t.Fatalf("manager identity %s extra %v, want the service account bound to its pod", ui.Username, ui.Extra)
	}

	const ns = "kw-statistics"
	ensureNamespace(t, c, ns)
	keep := map[string]string{
		"user/note":                           "keep",
		kwv1.AnnotationInjected:               "v0.1.0",
		kwv1.AnnotationHighErrorRateThreshold: "5%",
		kwv1.AnnotationRequests:               "total=0",
	}
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kong-0", Labels: map[string]string{"app": "kong"}, Annotations: keep},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	replicas := int32(2)
	dep, err := admin.AppsV1().Deployments(ns).Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "kong", Labels: map[string]string{"app": "kong"},
			Annotations: map[string]string{"user/note": "keep"}},
		Spec: appsv1.DeploymentSpec{Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "kong"}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "kong"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	patchPod := func(cs *kubernetes.Clientset, body string) error {
		_, err := cs.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.MergePatchType, []byte(body), metav1.PatchOptions{FieldManager: ingest.FieldManager})
		return err
	}
	patchDeployment := func(cs *kubernetes.Clientset, body string) error {
		_, err := cs.AppsV1().Deployments(ns).Patch(ctx, dep.Name, types.MergePatchType, []byte(body), metav1.PatchOptions{FieldManager: ingest.FieldManager})
		return err
	}
	// The policy takes effect once the API server's policy informer has it and has
	// type-checked it: wait for a denial of the simplest forbidden change, on a pod of its own
	// (a change let through before that must not touch what the checks below look at) and a
	// new value each time (a patch that changes nothing is no change to deny).
	warmup, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "warmup"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	eventually(t, "the statistics policy denying a label change by the manager", func() (bool, error) {
		i++
		_, err := manager.CoreV1().Pods(ns).Patch(ctx, warmup.Name, types.MergePatchType,
			fmt.Appendf(nil, `{"metadata":{"labels":{"try":"%d"}}}`, i), metav1.PatchOptions{})
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), statisticsPolicyMsg), err
	})

	const (
		specMsg        = "may not change the spec of "
		labelsMsg      = "may not change labels, owner references or finalizers"
		annotationsMsg = "may only change the kong-watcher.io statistics annotations"
	)
	stats := kwv1.Stats{APIVersion: kwv1.StatsAPIVersion, Kind: kwv1.StatsKind, DataPath: "nginx-request",
		Since: time.Now().Add(-time.Hour).UTC().Truncate(time.Second), Updated: time.Now().UTC().Truncate(time.Second),
		Total: kwv1.Summary{ListenerSummary: kwv1.ListenerSummary{Requests: 1234, Errors: 5, StatusClasses: map[string]uint64{"2xx": 1229, "5xx": 5}}}}
	statsJSON, _ := json.Marshal(stats)
	setStats := func(requests string) string {
		b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
			kwv1.AnnotationRequests: requests, kwv1.AnnotationStats: string(statsJSON)}}})
		return string(b)
	}
	check := func(what string, err error, wantMsg string) {
		t.Helper()
		switch {
		case wantMsg == "" && err != nil:
			t.Errorf("%s: denied: %v", what, err)
		case wantMsg != "" && err == nil:
			t.Errorf("%s: allowed, want denied by %s", what, statisticsPolicy)
		case wantMsg != "" && !(apierrors.IsForbidden(err) && strings.Contains(err.Error(), statisticsPolicyMsg) && strings.Contains(err.Error(), wantMsg)):
			t.Errorf("%s: %v, want Forbidden by %s saying %q", what, err, statisticsPolicy, wantMsg)
		case wantMsg != "":
			t.Logf("%s: denied: %v", what, err)
		}
	}

	for _, tc := range []struct{ name, body, wantMsg string }{
		{"the patch the report handler sends", string(ingest.PodPatch(pod.UID, stats, 0)), ""},
		{"requests and stats annotations", setStats("total=1234 errors=5 (0.4%) rate=12.3/s"), ""},
		{"remove a statistics annotation", `{"metadata":{"annotations":{"kong-watcher.io/latency":null}}}`, ""},
		{"change a label", `{"metadata":{"labels":{"app":"evil"}}}`, labelsMsg},
		{"add a label", `{"metadata":{"labels":{"kong-watcher.io/x":"y"}}}`, labelsMsg},
		{"add a finalizer", `{"metadata":{"finalizers":["example.com/hold"]}}`, labelsMsg},
		{"add an owner reference", `{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap","name":"x","uid":"6ba7b810-9dad-11d1-80b4-00c04fd430c8"}]}}`, labelsMsg},
		{"change another annotation", `{"metadata":{"annotations":{"user/note":"changed"}}}`, annotationsMsg},
		{"add another annotation", `{"metadata":{"annotations":{"user/new":"x"}}}`, annotationsMsg},
		{"remove another annotation", `{"metadata":{"annotations":{"user/note":null}}}`, annotationsMsg},
		{"change kong-watcher.io/injected", `{"metadata":{"annotations":{"kong-watcher.io/injected":"v9.9.9"}}}`, annotationsMsg},
		{"change the error-rate threshold", `{"metadata":{"annotations":{"kong-watcher.io/high-error-rate-threshold":"99%"}}}`, annotationsMsg},
		{"add a latency threshold", `{"metadata":{"annotations":{"kong-watcher.io/high-latency-p99-ms":"1"}}}`, annotationsMsg},
		{"statistics and another annotation at once", `{"metadata":{"annotations":{"kong-watcher.io/requests":"total=666","user/note":"x"}}}`, annotationsMsg},
		{"spec (activeDeadlineSeconds)", `{"spec":{"activeDeadlineSeconds":60}}`, specMsg + "pods " + ns + "/" + pod.Name},
		{"spec (image)", `{"spec":{"containers":[{"name":"proxy","image":"evil:3.9"}]}}`, specMsg},
	} {
		check("pod: "+tc.name, patchPod(manager, tc.body), tc.wantMsg)
	}
	got, err := admin.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range keep {
		if k != kwv1.AnnotationRequests && got.Annotations[k] != v {
			t.Errorf("pod annotation %s = %q, want %q", k, got.Annotations[k], v)
		}
	}
	if got.Annotations[kwv1.AnnotationRequests] != "total=1234 errors=5 (0.4%) rate=12.3/s" || got.Annotations[kwv1.AnnotationStats] != string(statsJSON) {
		t.Errorf("statistics annotations after the patches: %v", got.Annotations)
	}
	if _, ok := got.Annotations["user/new"]; ok || len(got.Labels) != 1 || got.Spec.ActiveDeadlineSeconds != nil ||
		len(got.Finalizers) != 0 || len(got.OwnerReferences) != 0 || got.Spec.Containers[0].Image != "kong:3.9" {
		t.Errorf("pod after the patches: annotations %v labels %v activeDeadlineSeconds %v finalizers %v owners %v image %s",
			got.Annotations, got.Labels, got.Spec.ActiveDeadlineSeconds, got.Finalizers, got.OwnerReferences, got.Spec.Containers[0].Image)
	}

	for _, tc := range []struct{ name, body, wantMsg string }{
		{"stats and pods annotations", `{"metadata":{"annotations":{"kong-watcher.io/stats":"{}","kong-watcher.io/pods":"2"}}}`, ""},
		{"spec.replicas", `{"spec":{"replicas":0}}`, specMsg + "deployments " + ns + "/" + dep.Name},
		{"pod template annotation", `{"spec":{"template":{"metadata":{"annotations":{"kong-watcher.io/stats":"{}"}}}}}`, specMsg},
		{"a label", `{"metadata":{"labels":{"app":"evil"}}}`, labelsMsg},
		{"another annotation", `{"metadata":{"annotations":{"user/note":"changed"}}}`, annotationsMsg},
	} {
		check("deployment: "+tc.name, patchDeployment(manager, tc.body), tc.wantMsg)
	}
	// The scale subresource is another resource: RBAC does not grant it.
	if _, err := manager.AppsV1().Deployments(ns).Patch(ctx, dep.Name, types.MergePatchType, []byte(`{"spec":{"replicas":0}}`),
		metav1.PatchOptions{}, "scale"); !apierrors.IsForbidden(err) || strings.Contains(err.Error(), "ValidatingAdmissionPolicy") {
		t.Errorf("deployment scale by the manager: %v, want Forbidden by RBAC", err)
	}
	gotDep, err := admin.AppsV1().Deployments(ns).Get(ctx, dep.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *gotDep.Spec.Replicas != 2 || gotDep.Labels["app"] != "kong" || gotDep.Annotations["user/note"] != "keep" ||
		gotDep.Annotations[kwv1.AnnotationPods] != "2" || len(gotDep.Spec.Template.Annotations) != 0 {
		t.Errorf("deployment after the patches: replicas %d labels %v annotations %v template annotations %v",
			*gotDep.Spec.Replicas, gotDep.Labels, gotDep.Annotations, gotDep.Spec.Template.Annotations)
	}

	// RBAC: no delete, whatever the policy says.
	if err := manager.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) ||
		!strings.Contains(err.Error(), `cannot delete resource "pods"`) {
		t.Errorf("pod delete by the manager: %v, want Forbidden by RBAC", err)
	}

	// An administrator (wildcard rights) is not the policy's business.
	if err := patchPod(admin, `{"metadata":{"labels":{"admin":"was-here"},"annotations":{"user/note":"admin"}},"spec":{"activeDeadlineSeconds":3600}}`); err != nil {
		t.Errorf("the administrator's pod update was blocked: %v", err)
	}
	if err := patchDeployment(admin, `{"metadata":{"labels":{"admin":"was-here"}},"spec":{"replicas":3}}`); err != nil {
		t.Errorf("the administrator's deployment update was blocked: %v", err)
	}
}

// TestKongServiceAccountHasNoRights: installing config/default gives Kong's service account
// nothing: with a real token bound to its pod it can neither read nor patch pods, record
// Events, nor review tokens, and no binding names it. The agent's report token (audience
// kong-watcher.io/manager) is not even accepted by the API server.
func TestKongServiceAccountHasNoRights(t *testing.T) {
	_, cfg := startEnv(t)
	ctx := t.Context()
	c := newClient(t, cfg)
	admin := kubernetes.NewForConfigOrDie(cfg)

	// Everything config/default installs, except the MutatingWebhookConfiguration (envtest's
	// copy, pointed at a local port, is installed already) and the rotator's Secret (the webhook
	// tests' rotator fills it).
	var all [][2]string
	for _, u := range kustomize(t, "default") {
		if k := u.GetKind(); k != "MutatingWebhookConfiguration" && k != "Secret" {
			all = append(all, [2]string{k, u.GetName()})
		}
	}
	applyRendered(t, c, all...)

	const ns, sa = "kw-kong-rights", "kong"
	ensureNamespace(t, c, ns)
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kong-0", Labels: map[string]string{"app": "kong"}},
		Spec: corev1.PodSpec{ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kong := tokenClient(t, ctx, admin, cfg, ns, sa, pod)
	rev, err := kong.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	if ui := rev.Status.UserInfo; ui.Username != "system:serviceaccount:"+ns+":"+sa || strings.Join(ui.Extra[podNameClaim], ",") != pod.Name {
		t.Fatalf("identity %s extra %v, want the kong service account bound to its pod", ui.Username, ui.Extra)
	}

	for _, ra := range []authorizationv1.ResourceAttributes{
		{Namespace: ns, Verb: "get", Resource: "pods", Name: pod.Name},
		{Namespace: ns, Verb: "list", Resource: "pods"},
		{Namespace: ns, Verb: "patch", Resource: "pods", Name: pod.Name},
		{Namespace: ns, Verb: "update", Resource: "pods", Name: pod.Name},
		{Verb: "patch", Resource: "pods"},
		{Namespace: ns, Verb: "create", Resource: "events"},
		{Namespace: ns, Verb: "patch", Resource: "events"},
		{Namespace: ns, Verb: "create", Group: "events.k8s.io", Resource: "events"},
		{Verb: "create", Group: "authentication.k8s.io", Resource: "tokenreviews"},
		{Verb: "create", Group: "authorization.k8s.io", Resource: "subjectaccessreviews"},
		{Namespace: ns, Verb: "get", Resource: "secrets"},
		{Namespace: ns, Verb: "patch", Group: "apps", Resource: "deployments"},
		{Verb: "write-statistics", Group: "kong-watcher.io", Resource: "reporters"},
		{Verb: "dry-run-pods", Group: "kong-watcher.io", Resource: "injectors"},
		{Verb: "report", Group: "kong-watcher.io", Resource: "agents"},
	} {
		r, err := kong.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectAccessReview: %v", err)
		}
		if r.Status.Allowed {
			t.Errorf("Kong's service account may %s %s.%s %s in %q (%s)", ra.Verb, ra.Resource, ra.Group, ra.Name, ra.Namespace, r.Status.Reason)
		}
	}
	// It holds what every service account holds, and nothing more: the same rules as a service
	// account of another namespace that nothing names.
	const baselineNS = "kw-kong-rights-baseline"
	ensureNamespace(t, c, baselineNS)
	if _, err := admin.CoreV1().ServiceAccounts(baselineNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if got, base := rulesIn(t, kong, ns), rulesIn(t, tokenClient(t, ctx, admin, cfg, baselineNS, "nobody", nil), ns); !slices.Equal(got, base) {
		t.Errorf("Kong's service account holds in %s:\n%s\nany service account holds:\n%s", ns, strings.Join(got, "\n"), strings.Join(base, "\n"))
	}

	forbidden := func(what string, err error) {
		t.Helper()
		if !apierrors.IsForbidden(err) {
			t.Errorf("%s as Kong's service account: %v, want Forbidden", what, err)
		}
	}
	_, err = kong.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	forbidden("get its pod", err)
	_, err = kong.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.MergePatchType, []byte(`{"metadata":{"annotations":{"kong-watcher.io/requests":"total=1"}}}`), metav1.PatchOptions{})
	forbidden("patch its pod's statistics", err)
	_, err = kong.CoreV1().Events(ns).Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "kong-0.x", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: pod.Name, UID: pod.UID},
		Reason:         kwv1.ReasonTrafficStats, Message: "x", Type: corev1.EventTypeNormal}, metav1.CreateOptions{})
	forbidden("create a core Event", err)
	_, err = kong.EventsV1().Events(ns).Create(ctx, &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{Name: "kong-0.y", Namespace: ns},
		Regarding: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: pod.Name, UID: pod.UID},
		Reason:    kwv1.ReasonHighErrorRate, Note: "x", Type: corev1.EventTypeWarning, Action: "Report",
		ReportingController: "kong-watcher-agent", ReportingInstance: "x", EventTime: metav1.NowMicro()}, metav1.CreateOptions{})
	forbidden("create an events.k8s.io Event", err)
	_, err = kong.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: "x"}}, metav1.CreateOptions{})
	forbidden("create a TokenReview", err)

	// No binding of any kind names it, its namespace's service accounts or all service accounts.
	names := func(s rbacSubject) bool {
		return (s.Kind == "ServiceAccount" && s.Namespace == ns) ||
			(s.Kind == "Group" && (s.Name == "system:serviceaccounts" || s.Name == "system:serviceaccounts:"+ns))
	}
	// (The API server's own defaults, which every service account has, aside.)
	notDefault := metav1.ListOptions{LabelSelector: "kubernetes.io/bootstrapping!=rbac-defaults"}
	crbs, err := admin.RbacV1().ClusterRoleBindings().List(ctx, notDefault)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range crbs.Items {
		for _, s := range b.Subjects {
			if names(rbacSubject{s.Kind, s.Name, s.Namespace}) {
				t.Errorf("ClusterRoleBinding %s names %+v", b.Name, s)
			}
		}
	}
	rbs, err := admin.RbacV1().RoleBindings("").List(ctx, notDefault)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range rbs.Items {
		for _, s := range b.Subjects {
			if names(rbacSubject{s.Kind, s.Name, s.Namespace}) {
				t.Errorf("RoleBinding %s/%s names %+v", b.Namespace, b.Name, s)
			}
		}
	}

	// The token the agent reports with is for the manager's audience only: the API server
	// refuses it outright.
	exp := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences: []string{kwv1.ReportAudience}, ExpirationSeconds: &exp,
		BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rc := rest.AnonymousClientConfig(cfg)
	rc.BearerToken = tr.Status.Token
	reportToken := kubernetes.NewForConfigOrDie(rc)
	if _, err := reportToken.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("the report token against the API server: %v, want Unauthorized", err)
	}
}

type rbacSubject struct{ Kind, Name, Namespace string }

// rulesIn is what cs may do in namespace ns, one sorted line per rule.
func rulesIn(t *testing.T, cs *kubernetes.Clientset, ns string) []string {
	t.Helper()
	r, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(t.Context(), &authorizationv1.SelfSubjectRulesReview{
		Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectRulesReview: %v", err)
	}
	var out []string
	for _, x := range r.Status.ResourceRules {
		out = append(out, fmt.Sprintf("resource %v %v %v %v", x.APIGroups, x.Resources, x.ResourceNames, x.Verbs))
	}
	for _, x := range r.Status.NonResourceRules {
		out = append(out, fmt.Sprintf("nonResource %v %v", x.NonResourceURLs, x.Verbs))
	}
	slices.Sort(out)
	return out
}

// tokenClient returns a clientset authenticated with a token of service account ns/sa bound to
// pod (what the kubelet mounts into the pod as its projected token), or bound to nothing when
// pod is nil (what `kubectl create token` hands out).
func tokenClient(t *testing.T, ctx context.Context, admin *kubernetes.Clientset, cfg *rest.Config, ns, sa string, pod *corev1.Pod) *kubernetes.Clientset {
	t.Helper()
	exp := int64(3600)
	spec := authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}
	if pod != nil {
		spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s (pod %v): %v", ns, sa, pod != nil, err)
	}
	sc := rest.AnonymousClientConfig(cfg)
	sc.BearerToken = tr.Status.Token
	cs, err := kubernetes.NewForConfig(sc)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
