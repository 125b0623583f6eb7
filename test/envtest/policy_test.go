package envtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const podNameClaim = "authentication.kubernetes.io/pod-name"

// TestAgentPolicy applies the agent's ClusterRole, ValidatingAdmissionPolicy and binding as
// `kubectl kustomize config/default` renders them, binds the ClusterRole to a service account
// the way config/samples does, and then acts as that service account with a real token bound
// to pod A (TokenRequest with boundObjectRef: the API server's token authenticator adds the
// authentication.kubernetes.io/pod-name extra claim, exactly as for a projected token in a
// running pod; envtest's API server has service-account signing keys configured). No
// impersonation: the identity is the one the agent has in a cluster.
func TestAgentPolicy(t *testing.T) {
	_, cfg := startEnv(t)
	ctx := t.Context()
	admin := kubernetes.NewForConfigOrDie(cfg)
	c := newClient(t, cfg)

	// The agent's objects from config/default, applied as rendered.
	objs := kustomize(t, "default")
	for _, kn := range [][2]string{
		{"ClusterRole", "kong-watcher-agent"},
		{"ValidatingAdmissionPolicy", "kong-watcher-agent-pod-annotations"},
		{"ValidatingAdmissionPolicyBinding", "kong-watcher-agent-pod-annotations"},
		{"ValidatingAdmissionPolicy", "kong-watcher-agent-events"},
		{"ValidatingAdmissionPolicyBinding", "kong-watcher-agent-events"},
	} {
		u := objs.find(kn[0], kn[1])
		if u == nil {
			t.Fatalf("config/default renders no %s %s", kn[0], kn[1])
		}
		u = u.DeepCopy()
		if err := c.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("creating %s %s: %v", kn[0], kn[1], err)
		}
	}

	const ns = "kw-policy"
	ensureNamespace(t, c, ns)
	mustCreate := func(err error) {
		t.Helper()
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	for _, sa := range []string{"kong", "other-operator"} {
		_, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		mustCreate(err)
	}
	// As config/samples/agent_rolebinding.yaml: the Kong service account gets the agent's
	// ClusterRole in its namespace.
	_, err := admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kong-watcher-agent"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "kong-watcher-agent"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "kong", Namespace: ns}},
	}, metav1.CreateOptions{})
	mustCreate(err)
	// A different in-cluster client (an operator that legitimately patches pods) with its own
	// Role: the policy must leave it alone.
	_, err = admin.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-patcher"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "patch"}}},
	}, metav1.CreateOptions{})
	mustCreate(err)
	_, err = admin.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "pod-patcher"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-patcher"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "other-operator", Namespace: ns}},
	}, metav1.CreateOptions{})
	mustCreate(err)

	newPod := func(name, sa string) *corev1.Pod {
		t.Helper()
		p, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "kong"},
				Annotations: map[string]string{"user/note": "keep", "kong-watcher.io/requests": "total=0"}},
			Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	podA, podB, podC := newPod("kong-a", "kong"), newPod("kong-b", "kong"), newPod("operator-c", "other-operator")

	agent := tokenClient(t, ctx, admin, cfg, ns, "kong", podA)
	operator := tokenClient(t, ctx, admin, cfg, ns, "other-operator", podC)

	// The identity really carries the pod-name claim (not impersonated).
	rev, err := agent.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	ui := rev.Status.UserInfo
	if ui.Username != "system:serviceaccount:"+ns+":kong" || strings.Join(ui.Extra[podNameClaim], ",") != podA.Name {
		t.Fatalf("token identity = %s extra %v, want the kong service account bound to pod %s", ui.Username, ui.Extra, podA.Name)
	}
	t.Logf("agent identity: %s, %s=%v", ui.Username, podNameClaim, ui.Extra[podNameClaim])

	patch := func(cs *kubernetes.Clientset, pod, body string) error {
		_, err := cs.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, []byte(body), metav1.PatchOptions{})
		return err
	}
	denied := func(err error) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "ValidatingAdmissionPolicy") &&
			strings.Contains(err.Error(), "kong-watcher-agent-pod-annotations")
	}

	// The policy takes effect once the API server's policy informer has it and has
	// type-checked it: wait for a denial of the simplest forbidden change.
	deadline := time.Now().Add(60 * time.Second)
	for {
		// (Pod C, so that a patch let through before the policy is active changes nothing
		// the checks below look at.)
		err := patch(agent, podC.Name, `{"metadata":{"annotations":{"kong-watcher.io/requests":"total=1"}}}`)
		if denied(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the policy never denied a patch of another pod; last result: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	for _, tc := range []struct {
		name, pod, body string
		allow           bool
	}{
		{"own pod, kong-watcher.io annotation", podA.Name, `{"metadata":{"annotations":{"kong-watcher.io/requests":"total=1234 errors=5 (0.4%) rate=12.3/s","kong-watcher.io/latency":"p99=20.1ms"}}}`, true},
		{"own pod, remove a kong-watcher.io annotation", podA.Name, `{"metadata":{"annotations":{"kong-watcher.io/latency":null}}}`, true},
		{"own pod, change another annotation", podA.Name, `{"metadata":{"annotations":{"user/note":"changed"}}}`, false},
		{"own pod, add another annotation", podA.Name, `{"metadata":{"annotations":{"user/new":"x"}}}`, false},
		{"own pod, remove another annotation", podA.Name, `{"metadata":{"annotations":{"user/note":null}}}`, false},
		{"own pod, label", podA.Name, `{"metadata":{"labels":{"app":"evil"}}}`, false},
		{"own pod, add a label", podA.Name, `{"metadata":{"labels":{"kong-watcher.io/x":"y"}}}`, false},
		{"own pod, finalizer", podA.Name, `{"metadata":{"finalizers":["example.com/hold"]}}`, false},
		{"own pod, spec", podA.Name, `{"spec":{"activeDeadlineSeconds":60}}`, false},
		{"own pod, image", podA.Name, `{"spec":{"containers":[{"name":"proxy","image":"evil:3.9"}]}}`, false},
		{"other pod, kong-watcher.io annotation", podB.Name, `{"metadata":{"annotations":{"kong-watcher.io/requests":"total=666"}}}`, false},
		{"other pod, label", podB.Name, `{"metadata":{"labels":{"app":"evil"}}}`, false},
	} {
		err := patch(agent, tc.pod, tc.body)
		switch {
		case tc.allow && err != nil:
			t.Errorf("%s: denied: %v", tc.name, err)
		case !tc.allow && err == nil:
			t.Errorf("%s: allowed, want denied by the policy", tc.name)
		case !tc.allow && !denied(err):
			t.Errorf("%s: error %v, want a denial by the ValidatingAdmissionPolicy", tc.name, err)
		case !tc.allow:
			t.Logf("%s: denied: %v", tc.name, err)
		}
	}

	got, err := admin.CoreV1().Pods(ns).Get(ctx, podA.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Annotations["kong-watcher.io/requests"] != "total=1234 errors=5 (0.4%) rate=12.3/s" ||
		got.Annotations["user/note"] != "keep" || got.Labels["app"] != "kong" || got.Spec.ActiveDeadlineSeconds != nil ||
		len(got.Finalizers) != 0 {
		t.Errorf("pod A after the patches: annotations %v labels %v activeDeadlineSeconds %v finalizers %v",
			got.Annotations, got.Labels, got.Spec.ActiveDeadlineSeconds, got.Finalizers)
	}
	if got, _ := admin.CoreV1().Pods(ns).Get(ctx, podB.Name, metav1.GetOptions{}); got != nil &&
		(got.Annotations["kong-watcher.io/requests"] != "total=0" || got.Labels["app"] != "kong") {
		t.Errorf("pod B was changed: annotations %v labels %v", got.Annotations, got.Labels)
	}

	// Events: only about its own pod, through either API group (client-go's core recorder
	// creates, then patches to bump the count; the events.k8s.io recorder creates).
	coreEvent := func(name, kind, obj string) *corev1.Event {
		return &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			InvolvedObject: corev1.ObjectReference{Kind: kind, APIVersion: "v1", Namespace: ns, Name: obj},
			Reason:         "TrafficStats", Message: "total=1234", Type: corev1.EventTypeNormal,
			Source: corev1.EventSource{Component: "kong-watcher-agent"}, Count: 1,
			FirstTimestamp: metav1.Now(), LastTimestamp: metav1.Now()}
	}
	deniedBy := func(err error, policy string) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policy+"'")
	}
	deadline = time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		_, err := agent.CoreV1().Events(ns).Create(ctx, coreEvent(fmt.Sprintf("warmup-%d", i), "Pod", podC.Name), metav1.CreateOptions{})
		if deniedBy(err, "kong-watcher-agent-events") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the events policy never denied an Event about another pod; last result: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := agent.CoreV1().Events(ns).Create(ctx, coreEvent("own", "Pod", podA.Name), metav1.CreateOptions{}); err != nil {
		t.Errorf("core Event about its own pod: denied: %v", err)
	} else if _, err := agent.CoreV1().Events(ns).Patch(ctx, "own", types.StrategicMergePatchType,
		[]byte(`{"count":2,"message":"total=2000"}`), metav1.PatchOptions{}); err != nil {
		t.Errorf("patching (count bump) an Event about its own pod: denied: %v", err)
	}
	for _, tc := range []struct{ name, kind, obj string }{
		{"core Event about another pod", "Pod", podB.Name},
		{"core Event about a Service", "Service", "kong-proxy"},
	} {
		_, err := agent.CoreV1().Events(ns).Create(ctx, coreEvent(strings.ReplaceAll(strings.ToLower(tc.name), " ", "-"), tc.kind, tc.obj), metav1.CreateOptions{})
		if !deniedBy(err, "kong-watcher-agent-events") {
			t.Errorf("%s: %v, want a denial by the events policy", tc.name, err)
		}
	}
	newEvent := func(name, obj string) *eventsv1.Event {
		return &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Regarding: corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: obj},
			Reason:    "HighErrorRate", Note: "5xx 12% over 1m", Type: corev1.EventTypeWarning, Action: "Alert",
			ReportingController: "kong-watcher.io/agent", ReportingInstance: podA.Name, EventTime: metav1.NowMicro()}
	}
	if _, err := agent.EventsV1().Events(ns).Create(ctx, newEvent("own-v1", podA.Name), metav1.CreateOptions{}); err != nil {
		t.Errorf("events.k8s.io Event about its own pod: denied: %v", err)
	}
	if _, err := agent.EventsV1().Events(ns).Create(ctx, newEvent("other-v1", podB.Name), metav1.CreateOptions{}); !deniedBy(err, "kong-watcher-agent-events") {
		t.Errorf("events.k8s.io Event about another pod: %v, want a denial by the events policy", err)
	}

	// A token of the same service account bound to no pod (`kubectl create token kong`, a
	// legacy Secret token) changes nothing through the agent's rights: not its "own" pod's
	// kong-watcher.io annotations (it has none), not a label, not an Event.
	unbound := tokenClient(t, ctx, admin, cfg, ns, "kong", nil)
	if rev, err := unbound.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("SelfSubjectReview (unbound): %v", err)
	} else if _, bound := rev.Status.UserInfo.Extra[podNameClaim]; bound || rev.Status.UserInfo.Username != "system:serviceaccount:"+ns+":kong" {
		t.Fatalf("unbound token identity %+v, want the kong service account without a pod claim", rev.Status.UserInfo)
	}
	for _, tc := range []struct{ name, pod, body string }{
		{"unbound token, kong-watcher.io annotation", podA.Name, `{"metadata":{"annotations":{"kong-watcher.io/requests":"total=666"}}}`},
		{"unbound token, label", podA.Name, `{"metadata":{"labels":{"kong-watcher.io/x":"y"}}}`},
		{"unbound token, another pod's annotation", podB.Name, `{"metadata":{"annotations":{"kong-watcher.io/requests":"total=666"}}}`},
	} {
		if err := patch(unbound, tc.pod, tc.body); !denied(err) {
			t.Errorf("%s: %v, want a denial by the ValidatingAdmissionPolicy", tc.name, err)
		} else if !strings.Contains(err.Error(), "token bound to its own pod") {
			t.Errorf("%s: denial %q does not say why", tc.name, err)
		}
	}
	if _, err := unbound.CoreV1().Events(ns).Create(ctx, coreEvent("unbound", "Pod", podA.Name), metav1.CreateOptions{}); !deniedBy(err, "kong-watcher-agent-events") {
		t.Errorf("unbound token, Event about pod A: %v, want a denial by the events policy", err)
	}
	if _, err := unbound.EventsV1().Events(ns).Create(ctx, newEvent("unbound-v1", podA.Name), metav1.CreateOptions{}); !deniedBy(err, "kong-watcher-agent-events") {
		t.Errorf("unbound token, events.k8s.io Event about pod A: %v, want a denial by the events policy", err)
	}

	// Not constrained: another pod-bound service account without the agent's ClusterRole
	// (the policy must not break operators), and an administrator.
	if err := patch(operator, podB.Name, `{"metadata":{"labels":{"operator":"was-here"},"annotations":{"user/note":"operator"}}}`); err != nil {
		t.Errorf("a pod-bound service account without the agent role was blocked: %v", err)
	}
	if err := patch(admin, podA.Name, `{"metadata":{"labels":{"admin":"was-here"}},"spec":{"activeDeadlineSeconds":3600}}`); err != nil {
		t.Errorf("the administrator was blocked: %v", err)
	}
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
