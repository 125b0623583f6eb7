package envtest

import (
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"
)

// applyRendered creates the named objects of config/default as rendered.
func applyRendered(t *testing.T, c client.Client, kindNames ...[2]string) {
	t.Helper()
	objs := kustomize(t, "default")
	for _, kn := range kindNames {
		u := objs.find(kn[0], kn[1])
		if u == nil {
			t.Fatalf("config/default renders no %s %s", kn[0], kn[1])
		}
		if err := c.Create(t.Context(), u.DeepCopy()); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("creating %s %s: %v", kn[0], kn[1], err)
		}
	}
}

// eventually retries f until it returns true (a policy takes effect once the API server's
// informer has it and has type-checked it) and fails with the last error after a minute.
func eventually(t *testing.T, what string, f func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, err := f()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened; last result: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestAgentContainerAccess: a user who may exec into, attach to and debug Kong's pods and
// update them cannot reach into the agent container (exec, attach, an ephemeral container
// targeting it, a new image), while Kong's own containers stay as reachable as before; the
// break-glass group can.
func TestAgentContainerAccess(t *testing.T) {
	_, cfg := startEnv(t)
	ctx := t.Context()
	c := newClient(t, cfg)
	admin := kubernetes.NewForConfigOrDie(cfg)
	applyRendered(t, c,
		[2]string{"ValidatingAdmissionPolicy", "kong-watcher-agent-container-access"},
		[2]string{"ValidatingAdmissionPolicyBinding", "kong-watcher-agent-container-access"})

	const ns = "kw-access"
	ensureNamespace(t, c, ns)
	// What a namespace's developers typically hold: exec, attach, debug and edit pods.
	if err := c.Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pod-debugger"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "update", "patch"}},
			{APIGroups: []string{""}, Resources: []string{"pods/exec", "pods/attach"}, Verbs: []string{"create", "get"}},
			{APIGroups: []string{""}, Resources: []string{"pods/ephemeralcontainers"}, Verbs: []string{"update", "patch"}},
		},
	}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if err := c.Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pod-debugger"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "pod-debugger"},
		Subjects:   []rbacv1.Subject{{Kind: "Group", APIGroup: "rbac.authorization.k8s.io", Name: "developers"}},
	}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	as := func(user string, groups ...string) *kubernetes.Clientset {
		uc := rest.CopyConfig(cfg)
		uc.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append(groups, "system:authenticated")}
		return kubernetes.NewForConfigOrDie(uc)
	}
	dev := as("dev", "developers")
	oncall := as("oncall", "developers", "kong-watcher:break-glass")
	for _, cs := range []*kubernetes.Clientset{dev, oncall} {
		rev, err := cs.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("SelfSubjectReview: %v", err)
		}
		t.Logf("acting as %s %v", rev.Status.UserInfo.Username, rev.Status.UserInfo.Groups)
	}

	always := corev1.ContainerRestartPolicyAlways
	yes := true
	newPod := func(name string) *corev1.Pod {
		p, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{
				ShareProcessNamespace: &yes,
				InitContainers: []corev1.Container{{Name: kwv1.AgentContainerName, Image: "kong-watcher/agent:v1",
					RestartPolicy: &always}},
				Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	pod := newPod("kong-injected")

	denied := func(err error) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "kong-watcher-agent-container-access")
	}
	connect := func(cs *kubernetes.Clientset, sub, container string) error {
		var opts runtime.Object = &corev1.PodExecOptions{Container: container, Command: []string{"sh"}, Stdout: true}
		if sub == "attach" {
			opts = &corev1.PodAttachOptions{Container: container, Stdout: true}
		}
		return cs.CoreV1().RESTClient().Post().Namespace(ns).Resource("pods").Name(pod.Name).SubResource(sub).
			VersionedParams(opts, scheme.ParameterCodec).Do(ctx).Error()
	}
	eventually(t, "a denied exec into the agent", func() (bool, error) {
		err := connect(dev, "exec", kwv1.AgentContainerName)
		return denied(err), err
	})

	for _, sub := range []string{"exec", "attach"} {
		if err := connect(dev, sub, kwv1.AgentContainerName); !denied(err) {
			t.Errorf("%s into the agent as a developer: %v, want a denial by the policy", sub, err)
		} else {
			t.Logf("%s into the agent as a developer: %v", sub, err)
		}
		// Kong's container: admission lets it through; the pod has no node here, so the API
		// server fails after admission, never with the policy's denial.
		if err := connect(dev, sub, "proxy"); denied(err) || apierrors.IsForbidden(err) {
			t.Errorf("%s into Kong's container as a developer: %v, want past admission", sub, err)
		} else {
			t.Logf("%s into Kong's container as a developer: past admission (%v)", sub, err)
		}
		if err := connect(oncall, sub, kwv1.AgentContainerName); denied(err) || apierrors.IsForbidden(err) {
			t.Errorf("%s into the agent as break-glass: %v, want past admission", sub, err)
		}
	}

	debug := func(cs *kubernetes.Clientset, name, target string) error {
		p, err := admin.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: name, Image: "busybox",
				TerminationMessagePolicy: corev1.TerminationMessageReadFile, ImagePullPolicy: corev1.PullIfNotPresent},
			TargetContainerName: target})
		_, err = cs.CoreV1().Pods(ns).UpdateEphemeralContainers(ctx, pod.Name, p, metav1.UpdateOptions{})
		return err
	}
	if err := debug(dev, "debug-agent", kwv1.AgentContainerName); !denied(err) {
		t.Errorf("ephemeral container targeting the agent as a developer: %v, want a denial by the policy", err)
	}
	if err := debug(dev, "debug-proxy", "proxy"); err != nil {
		t.Errorf("ephemeral container targeting Kong as a developer: %v", err)
	}
	// Adding another one later keeps the earlier ones: only new ones are judged.
	if err := debug(dev, "debug-pod", ""); err != nil {
		t.Errorf("ephemeral container without a target as a developer: %v", err)
	}
	if err := debug(oncall, "debug-agent-oncall", kwv1.AgentContainerName); err != nil {
		t.Errorf("ephemeral container targeting the agent as break-glass: %v", err)
	}

	setImage := func(cs *kubernetes.Clientset, init bool, container, image string) error {
		list := "containers"
		if init {
			list = "initContainers"
		}
		body := `{"spec":{"` + list + `":[{"name":"` + container + `","image":"` + image + `"}]}}`
		_, err := cs.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.StrategicMergePatchType, []byte(body), metav1.PatchOptions{})
		return err
	}
	if err := setImage(dev, true, kwv1.AgentContainerName, "evil/agent:latest"); !denied(err) {
		t.Errorf("new agent image as a developer: %v, want a denial by the policy", err)
	}
	if err := setImage(dev, false, "proxy", "kong:3.10"); err != nil {
		t.Errorf("new Kong image as a developer: %v", err)
	}
	if _, err := dev.CoreV1().Pods(ns).Patch(ctx, pod.Name, types.MergePatchType,
		[]byte(`{"metadata":{"labels":{"team":"gateway"}}}`), metav1.PatchOptions{}); err != nil {
		t.Errorf("label update of an injected pod as a developer: %v", err)
	}
	if err := setImage(oncall, true, kwv1.AgentContainerName, "kong-watcher/agent:v2"); err != nil {
		t.Errorf("new agent image as break-glass: %v", err)
	}
	got, err := admin.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.InitContainers[0].Image; img != "kong-watcher/agent:v2" {
		t.Errorf("agent image %q, want only the break-glass change", img)
	}
}

// TestWebhookMayOnlyDryRunPods: the webhook's identity (its rendered ClusterRole, which has
// `create pods` for the admission check) can create pods only as dry runs.
// webhookIdentity installs the webhook's service account with its rendered ClusterRoles (and
// the extra rendered objects), creates the namespace ns, and returns a controller-runtime
// client and a clientset as admin and a clientset as the webhook.
func webhookIdentity(t *testing.T, cfg *rest.Config, ns string, extra ...[2]string) (client.Client, *kubernetes.Clientset, *kubernetes.Clientset) {
	t.Helper()
	c := newClient(t, cfg)
	admin := kubernetes.NewForConfigOrDie(cfg)
	ensureNamespace(t, c, app.DefaultNamespace)
	applyRendered(t, c, append([][2]string{
		{"ServiceAccount", "kong-watcher-webhook"},
		{"ClusterRole", "kong-watcher-webhook-role"},
		{"ClusterRoleBinding", "kong-watcher-webhook-rolebinding"},
		{"ClusterRole", "kong-watcher-webhook-dry-run-role"},
		{"ClusterRoleBinding", "kong-watcher-webhook-dry-run-rolebinding"},
	}, extra...)...)
	ensureNamespace(t, c, ns)
	return c, admin, tokenClient(t, t.Context(), admin, cfg, app.DefaultNamespace, "kong-watcher-webhook", nil)
}

func TestWebhookMayOnlyDryRunPods(t *testing.T) {
	_, cfg := startEnv(t)
	ctx := t.Context()
	const ns = "kw-dry-run"
	_, admin, webhook := webhookIdentity(t, cfg, ns,
		[2]string{"ValidatingAdmissionPolicy", "kong-watcher-webhook-dry-run-only"},
		[2]string{"ValidatingAdmissionPolicyBinding", "kong-watcher-webhook-dry-run-only"})
	pod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}}}
	}
	denied := func(err error) bool {
		return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "kong-watcher-webhook-dry-run-only")
	}
	eventually(t, "a denied pod create by the webhook identity", func() (bool, error) {
		_, err := webhook.CoreV1().Pods(ns).Create(ctx, pod("real"), metav1.CreateOptions{})
		return denied(err), err
	})
	if _, err := webhook.CoreV1().Pods(ns).Create(ctx, pod("checked"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("dry-run create by the webhook identity: %v", err)
	}
	if _, err := admin.CoreV1().Pods(ns).Get(ctx, "checked", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the dry run stored a pod: %v", err)
	}
	// An administrator's pods are not this policy's business.
	if _, err := admin.CoreV1().Pods(ns).Create(ctx, pod("admins"), metav1.CreateOptions{}); err != nil {
		t.Errorf("administrator's pod create: %v", err)
	}
}
