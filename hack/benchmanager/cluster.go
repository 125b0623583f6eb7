package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/hack/internal/benchenv"
	"github.com/kong-watcher/kong-watcher/test/benchkit"
	"github.com/kong-watcher/kong-watcher/webhook/inject"
)

// Names config/default renders (cmd/webhook/app's defaults).
const (
	managerNamespace = "kong-watcher-system"
	managerSA        = "kong-watcher-webhook"
	managerService   = "kong-watcher-webhook-service"
	kongNamespace    = "kong"
	kongSA           = benchenv.KongServiceAccount
)

// tokenTTL is the projected report token's lifetime the webhook injects (--report-token-ttl).
const tokenTTL = int64(3600)

// managerResources are the manager container's requests and limits as config/default ships them.
type managerResources struct {
	cpuRequest, cpuLimit, memRequest, memLimit string
}

// applyConfigDefault creates what `kubectl kustomize config/default` renders, except the
// manager's own Deployment and PodDisruptionBudget (the managers run here as processes) and the
// MutatingWebhookConfiguration (the pods are created already injected; no admission call
// belongs on the measured path). So the manager's ServiceAccount, its ClusterRole and Roles and
// their bindings, and the ValidatingAdmissionPolicies are the shipped ones.
func applyConfigDefault(ctx context.Context, c client.Client, policies bool) ([]string, managerResources, error) {
	var res managerResources
	docs, err := benchenv.RenderConfigDefault()
	if err != nil {
		return nil, res, err
	}
	skip := map[string]bool{"Deployment": true, "PodDisruptionBudget": true, "MutatingWebhookConfiguration": true}
	if !policies {
		skip["ValidatingAdmissionPolicy"], skip["ValidatingAdmissionPolicyBinding"] = true, true
	}
	var applied []string
	for _, doc := range docs {
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			return nil, res, fmt.Errorf("config/default: %w", err)
		}
		if u.GetKind() == "Deployment" {
			if cs, _, _ := unstructured.NestedSlice(u.Object, "spec", "template", "spec", "containers"); len(cs) > 0 {
				if m, ok := cs[0].(map[string]any); ok {
					res.cpuRequest, _, _ = unstructured.NestedString(m, "resources", "requests", "cpu")
					res.cpuLimit, _, _ = unstructured.NestedString(m, "resources", "limits", "cpu")
					res.memRequest, _, _ = unstructured.NestedString(m, "resources", "requests", "memory")
					res.memLimit, _, _ = unstructured.NestedString(m, "resources", "limits", "memory")
				}
			}
		}
		if skip[u.GetKind()] {
			continue
		}
		if err := c.Create(ctx, u); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, res, fmt.Errorf("creating %s %s: %w", u.GetKind(), u.GetName(), err)
		}
		applied = append(applied, u.GetKind()+"/"+u.GetName())
	}
	return applied, res, nil
}

// serving is the managers' TLS material: a CA the agents trust and a serving pair for the
// Service's DNS names (as the certificate rotator would issue it), RSA 2048 as the rotator makes.
type serving struct {
	dir   string
	caPEM []byte
}

func newServing(dir string) (*serving, error) {
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kong-watcher-bench-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	svc := managerService + "." + managerNamespace + ".svc"
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: svc},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames:    []string{svc, svc + ".cluster.local", "localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	s := &serving{dir: dir, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	files := map[string][]byte{
		"tls.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"tls.key": pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
		"ca.crt":  s.caPEM,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// managerKubeconfig writes a kubeconfig for the manager's ServiceAccount: a real token from
// TokenRequest (what a pod of that ServiceAccount is given), so the API server authorizes and
// admits the managers' calls as the installed product's identity (RBAC, and the
// kong-watcher-manager-statistics-only policy, which matches on that identity's rights).
func managerKubeconfig(ctx context.Context, admin *kubernetes.Clientset, cfg *rest.Config, path string) (*rest.Config, error) {
	exp := int64(4 * 3600)
	tr, err := admin.CoreV1().ServiceAccounts(managerNamespace).CreateToken(ctx, managerSA,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("TokenRequest for the manager's ServiceAccount: %w", err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["manager"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["manager"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "manager"}
	kc.CurrentContext = "manager"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return nil, err
	}
	mc := rest.AnonymousClientConfig(cfg)
	mc.BearerToken = tr.Status.Token
	mc.QPS = -1
	return mc, nil
}

// fleet is the simulated Kong installation: Deployments, their ReplicaSets, their pods.
type fleet struct {
	deployments []*appsv1.Deployment
	pods        []*corev1.Pod // index = agent
	tokens      []string      // the pod-bound report token of each pod
	podBytes    int           // JSON size of one pod as stored (spec + status + metadata)
}

const hashAlphabet = "bcdfghjklmnpqrstvwxz2456789"

func randSuffix(n int, seed uint64) string {
	b := make([]byte, n)
	for i := range b {
		seed = seed*6364136223846793005 + 1442695040888963407
		b[i] = hashAlphabet[(seed>>33)%uint64(len(hashAlphabet))]
	}
	return string(b)
}

// injectConfig is what the webhook injects with its default flags in this namespace layout.
func injectConfig(caPEM []byte) inject.Config {
	cfg := inject.DefaultConfig()
	cfg.Image = "kong-watcher/agent:bench"
	cfg.Report = inject.ReportConfig{
		URL:                    fmt.Sprintf("https://%s.%s.svc:443%s", managerService, managerNamespace, kwv1.ReportPath),
		Audience:               kwv1.ReportAudience,
		TokenExpirationSeconds: tokenTTL,
		CA:                     func() []byte { return caPEM },
	}
	return cfg
}

// runningStatus is what the kubelet would have written for a running injected Kong pod, so
// the pods the manager patches have the size of real ones (there is no kubelet here).
func runningStatus(pod *corev1.Pod, i int) corev1.PodStatus {
	start := metav1.NewTime(time.Now().Add(-time.Hour).Truncate(time.Second))
	ip := fmt.Sprintf("10.244.%d.%d", i/250, 2+i%250)
	cond := func(t corev1.PodConditionType) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: start}
	}
	st := corev1.PodStatus{
		Phase: corev1.PodRunning,
		Conditions: []corev1.PodCondition{cond("PodReadyToStartContainers"), cond(corev1.PodInitialized),
			cond(corev1.PodReady), cond(corev1.ContainersReady), cond(corev1.PodScheduled)},
		HostIP: fmt.Sprintf("10.0.0.%d", 10+i%20), HostIPs: []corev1.HostIP{{IP: fmt.Sprintf("10.0.0.%d", 10+i%20)}},
		PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, StartTime: &start, QOSClass: corev1.PodQOSBurstable,
	}
	for _, c := range pod.Spec.InitContainers {
		cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image, ImageID: "docker.io/library/" + c.Image + "@sha256:" + strings.Repeat("ab", 32),
			ContainerID: "containerd://" + strings.Repeat("cd", 32)}
		if c.RestartPolicy != nil {
			cs.Ready, cs.Started = true, ptr.To(true)
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: start}
		} else {
			cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed", StartedAt: start, FinishedAt: start,
				ContainerID: cs.ContainerID}
		}
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
	}
	for _, c := range pod.Spec.Containers {
		st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{Name: c.Name, Image: c.Image,
			ImageID: "docker.io/library/" + c.Image + "@sha256:" + strings.Repeat("ef", 32), ContainerID: "containerd://" + strings.Repeat("01", 32),
			Ready: true, Started: ptr.To(true), State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: start}}})
	}
	return st
}

// createFleet creates nDeploy Deployments, one ReplicaSet each (owned by its Deployment, as
// the Deployment controller would), and perDeploy pods per ReplicaSet (owned by it, labelled,
// with the agent injected by the real injection code, a running status), plus one pod-bound
// report token per pod from TokenRequest.
func createFleet(ctx context.Context, admin *kubernetes.Clientset, caPEM []byte, nDeploy, perDeploy, workers int) (*fleet, error) {
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kongNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	if _, err := admin.CoreV1().ServiceAccounts(kongNamespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: kongSA}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, err
	}
	icfg := injectConfig(caPEM)
	f := &fleet{pods: make([]*corev1.Pod, nDeploy*perDeploy), tokens: make([]string, nDeploy*perDeploy)}
	type job struct {
		i   int
		pod *corev1.Pod
	}
	var jobs []job
	for d := range nDeploy {
		name := fmt.Sprintf("kong-gw-%02d", d)
		tmpl := benchenv.KongPodTemplate(name)
		dep := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kongNamespace, Labels: map[string]string{"app.kubernetes.io/name": "kong"}},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To(int32(perDeploy)),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": name}},
				Template: tmpl,
			},
		}
		dep, err := admin.AppsV1().Deployments(kongNamespace).Create(ctx, dep, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("creating Deployment %s: %w", name, err)
		}
		// The status the Deployment controller would write (none runs here): the rollup reads
		// status.replicas for "n of m pods reporting".
		n := int32(perDeploy)
		dep.Status = appsv1.DeploymentStatus{ObservedGeneration: dep.Generation, Replicas: n, UpdatedReplicas: n, ReadyReplicas: n,
			AvailableReplicas: n, Conditions: []appsv1.DeploymentCondition{
				{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: "MinimumReplicasAvailable", Message: "Deployment has minimum availability."},
				{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: "NewReplicaSetAvailable", Message: fmt.Sprintf("ReplicaSet %q has successfully progressed.", name)}}}
		if dep, err = admin.AppsV1().Deployments(kongNamespace).UpdateStatus(ctx, dep, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("Deployment %s status: %w", name, err)
		}
		f.deployments = append(f.deployments, dep)
		hash := randSuffix(9, uint64(d)+1)
		rsTmpl := *tmpl.DeepCopy()
		rsTmpl.Labels["pod-template-hash"] = hash
		rs := &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-" + hash, Namespace: kongNamespace, Labels: rsTmpl.Labels,
				Annotations: map[string]string{"deployment.kubernetes.io/desired-replicas": fmt.Sprint(perDeploy),
					"deployment.kubernetes.io/max-replicas": fmt.Sprint(perDeploy + 1), "deployment.kubernetes.io/revision": "1"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: dep.Name, UID: dep.UID,
					Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}},
			Spec: appsv1.ReplicaSetSpec{
				Replicas: ptr.To(int32(perDeploy)),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "kong",
					"app.kubernetes.io/instance": name, "pod-template-hash": hash}},
				Template: rsTmpl,
			},
		}
		rs, err = admin.AppsV1().ReplicaSets(kongNamespace).Create(ctx, rs, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("creating ReplicaSet for %s: %w", name, err)
		}
		rs.Status = appsv1.ReplicaSetStatus{Replicas: n, FullyLabeledReplicas: n, ReadyReplicas: n, AvailableReplicas: n, ObservedGeneration: rs.Generation}
		if rs, err = admin.AppsV1().ReplicaSets(kongNamespace).UpdateStatus(ctx, rs, metav1.UpdateOptions{}); err != nil {
			return nil, fmt.Errorf("ReplicaSet %s status: %w", rs.Name, err)
		}
		for k := range perDeploy {
			i := d*perDeploy + k
			pod := &corev1.Pod{
				ObjectMeta: *rsTmpl.ObjectMeta.DeepCopy(),
				Spec:       *rsTmpl.Spec.DeepCopy(),
			}
			pod.Name = rs.Name + "-" + randSuffix(5, uint64(i)*7919+13)
			pod.Namespace = kongNamespace
			pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs.Name, UID: rs.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}
			pod.Spec.NodeName = fmt.Sprintf("node-%02d", i%20)
			inject.Inject(pod, icfg)
			jobs = append(jobs, job{i, pod})
		}
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	ch := make(chan job)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				pod, tok, err := createPod(ctx, admin, j.pod, j.i)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				f.pods[j.i], f.tokens[j.i] = pod, tok
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if raw, err := admin.CoreV1().RESTClient().Get().AbsPath("/api/v1/namespaces", kongNamespace, "pods", f.pods[0].Name).DoRaw(ctx); err == nil {
		f.podBytes = len(raw)
	}
	return f, nil
}

// createSanityPod is a pod like the fleet's, owned by nothing, for the checks before the run.
func createSanityPod(ctx context.Context, admin *kubernetes.Clientset, caPEM []byte) (*corev1.Pod, string, error) {
	tmpl := benchenv.KongPodTemplate("kw-bench-sanity")
	pod := &corev1.Pod{ObjectMeta: tmpl.ObjectMeta, Spec: tmpl.Spec}
	pod.Name, pod.Namespace = "kw-bench-sanity", kongNamespace
	inject.Inject(pod, injectConfig(caPEM))
	return createPod(ctx, admin, pod, 999)
}

// createPod creates the pod, gives it a running status, and asks for its report token as the
// kubelet would for the projected volume the webhook injected.
func createPod(ctx context.Context, admin *kubernetes.Clientset, pod *corev1.Pod, i int) (*corev1.Pod, string, error) {
	created, err := admin.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("creating pod %s: %w", pod.Name, err)
	}
	created.Status = runningStatus(created, i)
	if created, err = admin.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, "", fmt.Errorf("pod %s status: %w", pod.Name, err)
	}
	tok, err := reportToken(ctx, admin, created)
	return created, tok, err
}

// reportToken is the pod's projected report token: service account kong, audience
// v1alpha1.ReportAudience, bound to the pod (name and UID), what the kubelet writes to the
// agent's kong-watcher-token volume.
func reportToken(ctx context.Context, admin *kubernetes.Clientset, pod *corev1.Pod) (string, error) {
	exp := tokenTTL
	tr, err := admin.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{kwv1.ReportAudience}, ExpirationSeconds: &exp,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("TokenRequest for pod %s: %w", pod.Name, err)
	}
	return tr.Status.Token, nil
}

// checkPolicy waits until the kong-watcher-manager-statistics-only ValidatingAdmissionPolicy
// refuses the manager identity a non-statistics annotation (policies take effect a moment
// after they are created), so every measured PATCH goes through it.
func checkPolicy(ctx context.Context, mgr *kubernetes.Clientset, pod *corev1.Pod) error {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		_, err := mgr.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType,
			[]byte(`{"metadata":{"annotations":{"example.com/not-statistics":"x"}}}`), metav1.PatchOptions{})
		if err != nil && (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) && strings.Contains(err.Error(), "statistics") {
			return nil
		}
		last = err
		if err == nil {
			// Not in force yet: undo, wait, retry.
			_, _ = mgr.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType,
				[]byte(`{"metadata":{"annotations":{"example.com/not-statistics":null}}}`), metav1.PatchOptions{})
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("the kong-watcher-manager-statistics-only policy does not refuse the manager a foreign annotation (last: %v)", last)
}

// manager is one manager process (the real cmd/webhook binary).
type manager struct {
	idx                                     int
	cmd                                     *exec.Cmd
	pid                                     int
	webhookPort, probePort, metricsPort     int
	logPath                                 string
	done                                    chan error
	reportsTotal                            map[string]float64 // kong_watcher_manager_reports_total by result, at the end
	heapInuse, goroutines, openFDs, threads float64
}

func startManager(bin, dir, kubeconfig, certDir string, idx int) (*manager, error) {
	m := &manager{idx: idx, done: make(chan error, 1)}
	var err error
	for _, p := range []*int{&m.webhookPort, &m.probePort, &m.metricsPort} {
		if *p, err = benchkit.FreePort(); err != nil {
			return nil, err
		}
	}
	m.logPath = filepath.Join(dir, fmt.Sprintf("manager-%d.log", idx))
	logf, err := os.Create(m.logPath)
	if err != nil {
		return nil, err
	}
	m.cmd = exec.Command(bin,
		"--webhook-host=127.0.0.1", fmt.Sprintf("--webhook-port=%d", m.webhookPort),
		fmt.Sprintf("--health-probe-bind-address=127.0.0.1:%d", m.probePort),
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", m.metricsPort),
		"--disable-cert-rotation", "--webhook-cert-path="+certDir,
		// Every simulated agent reports from 127.0.0.1, where a cluster gives each pod an address.
		"--report-reviews-per-address=0",
	)
	m.cmd.Env = append(os.Environ(), "POD_NAMESPACE="+managerNamespace, "KUBECONFIG="+kubeconfig,
		"AGENT_IMAGE=kong-watcher/agent:bench")
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.SysProcAttr = procAttr()
	if err := m.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	m.pid = m.cmd.Process.Pid
	go func() { m.done <- m.cmd.Wait(); logf.Close() }()
	return m, nil
}

func (m *manager) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-m.done:
			m.done <- err
			return fmt.Errorf("manager %d exited: %v (log: %s)\n%s", m.idx, err, m.logPath, tail(m.logPath, 20))
		case <-time.After(100 * time.Millisecond):
		}
		if resp, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/readyz", m.probePort)); err == nil && resp == 200 {
			return nil
		}
	}
	return fmt.Errorf("manager %d not ready after %v (log: %s)\n%s", m.idx, timeout, m.logPath, tail(m.logPath, 20))
}

// stop sends SIGTERM (the binary releases its lease and shuts down gracefully) and waits.
func (m *manager) stop() {
	if m.cmd.Process == nil {
		return
	}
	_ = m.cmd.Process.Signal(sigterm)
	select {
	case err := <-m.done:
		m.done <- err
	case <-time.After(15 * time.Second):
		_ = m.cmd.Process.Kill()
	}
}

func (m *manager) exited() bool {
	select {
	case err := <-m.done:
		m.done <- err
		return true
	default:
		return false
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
