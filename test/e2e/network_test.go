//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// The network step's objects: a namespace of its own, an nginx pod (the gateway image, which
// answers GET /healthz itself) behind a ClusterIP Service, and the client pod.
const (
	netNS         = "kw-e2e-net"
	netWeb        = "kw-e2e-web"
	netClient     = "kw-e2e-netcheck"
	netcheckImage = "localhost/kong-watcher/netcheck:e2e"
	netDomain     = "cluster.local" // the kubelet's clusterDomain (hack/e2e-cluster.sh)
)

// ---------------------------------------------------------------------------------------
// Step 9: what every pod of a real cluster has, and the cluster of `make e2e` now too
// (hack/e2e-cluster.sh: CoreDNS as the kubelet's clusterDNS, kube-proxy): from a pod with the
// default dnsPolicy, the `kubernetes` Service and a test Service resolve by name, an HTTP GET
// through the test Service's name reaches the nginx pod behind it, and the API server answers
// at https://kubernetes.default.svc with the service account's CA.

func (s *suite) stepNetwork(t *testing.T) {
	dnsIP := os.Getenv("KW_E2E_DNS_IP")
	if dnsIP == "" {
		t.Fatal("KW_E2E_DNS_IP is not set: the cluster's env file (hack/e2e-cluster.sh up) names its DNS server")
	}
	s.deleteNetNamespace(t, true) // a leftover of an earlier run against a kept cluster
	t.Cleanup(func() { s.deleteNetNamespace(t, false) })
	t.Cleanup(func() { // before the namespace goes (cleanups run last first)
		if t.Failed() {
			t.Logf("--- kubectl get pods,services,endpointslices,events -n %s -o wide\n%s", netNS,
				s.quietKubectl(time.Minute, "get", "pods,services,endpointslices,events", "-n", netNS, "-o", "wide"))
		}
	})

	ctx, cancel := ctx30()
	defer cancel()
	if _, err := s.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: netNS}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app.kubernetes.io/name": netWeb}
	web := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: netWeb, Namespace: netNS, Labels: labels},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "nginx", Image: gatewayImage, ImagePullPolicy: corev1.PullNever,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: httpPort}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: probePath, Port: intstr.FromString("http")}},
					PeriodSeconds: 1,
				},
			}},
		},
	}
	if _, err := s.cs.CoreV1().Pods(netNS).Create(ctx, web, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := s.cs.CoreV1().Services(netNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: netWeb, Namespace: netNS},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k8sSvc, err := s.cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Service %s/%s has ClusterIP %s; Service default/kubernetes %s; the cluster DNS server is %s",
		netNS, netWeb, svc.Spec.ClusterIP, k8sSvc.Spec.ClusterIP, dnsIP)

	var webIP string
	waitFor(t, "pod "+netWeb+" Ready and the only ready endpoint of Service "+netWeb, waitShort, 250*time.Millisecond,
		func(ctx context.Context) (bool, string, error) {
			p, err := s.cs.CoreV1().Pods(netNS).Get(ctx, netWeb, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			if !podReady(p) {
				return false, "pod phase " + string(p.Status.Phase) + ", not Ready", nil
			}
			webIP = p.Status.PodIP
			slices, err := s.cs.DiscoveryV1().EndpointSlices(netNS).List(ctx, metav1.ListOptions{
				LabelSelector: discoveryv1.LabelServiceName + "=" + netWeb})
			if err != nil {
				return false, "", err
			}
			var ready []string
			for _, sl := range slices.Items {
				for _, ep := range sl.Endpoints {
					if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
						ready = append(ready, ep.Addresses...)
					}
				}
			}
			return len(ready) == 1 && ready[0] == webIP, fmt.Sprintf("ready endpoints %v, pod IP %s", ready, webIP), nil
		})
	// A pod's namespace gets its default service account from the controller-manager; the
	// client pod needs it (its token is what -api sends).
	waitFor(t, "service account "+netNS+"/default", waitShort, 250*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		_, err := s.cs.CoreV1().ServiceAccounts(netNS).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, "", err
	})

	svcFQDN := netWeb + "." + netNS + ".svc." + netDomain
	args := []string{"-timeout", "30s",
		"-resolve", "kubernetes.default.svc." + netDomain + "=" + k8sSvc.Spec.ClusterIP,
		"-resolve", "kubernetes.default=" + k8sSvc.Spec.ClusterIP, // through the search domains
		"-resolve", netWeb + "=" + svc.Spec.ClusterIP, // the pod's own namespace
		"-resolve", svcFQDN + "=" + svc.Spec.ClusterIP,
		"-get", "http://" + netWeb + "." + netNS + ".svc:80" + probePath + "=200",
		"-api",
	}
	client := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: netClient, Namespace: netNS},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "netcheck", Image: netcheckImage, ImagePullPolicy: corev1.PullNever, Args: args,
			}},
		},
	}
	started := time.Now()
	if _, err := s.cs.CoreV1().Pods(netNS).Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Logf("pod %s: /netcheck %s", netClient, strings.Join(args, " "))
	var final *corev1.Pod
	waitFor(t, "pod "+netClient+" to finish", waitShort, 250*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		p, err := s.cs.CoreV1().Pods(netNS).Get(ctx, netClient, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		final = p
		done := p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
		return done, "phase " + string(p.Status.Phase), nil
	})
	took := time.Since(started)
	out := s.podLogs(t, netNS, netClient)
	t.Logf("pod %s (%s, %s after its creation):\n%s", netClient, final.Status.Phase, took.Round(100*time.Millisecond), out)
	if final.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("from pod %s, a check of the cluster's DNS or Service routing failed (its output above)", netClient)
	}

	// The pod's resolv.conf is the kubelet's ClusterFirst one.
	for _, want := range []string{"nameserver " + dnsIP, "search " + netNS + ".svc." + netDomain + " svc." + netDomain + " " + netDomain, "ndots:5"} {
		if !strings.Contains(out, want) {
			t.Errorf("the client pod's /etc/resolv.conf lacks %q", want)
		}
	}
	// The GET through the Service's name reached the nginx pod, from the client pod's own
	// address (kube-proxy masquerades only traffic from outside the pod range).
	entries, err := parseAccessLog(netWeb, s.podLogs(t, netNS, netWeb))
	if err != nil {
		t.Fatal(err)
	}
	var fromClient int
	for _, e := range entries {
		if e.RequestURI == probePath && e.RemoteAddr == final.Status.PodIP && e.Status == 200 {
			fromClient++
		}
	}
	if fromClient == 0 {
		t.Errorf("nginx in pod %s (%s) logged no GET %s from the client pod %s", netWeb, webIP, probePath, final.Status.PodIP)
	}
	s.note("Step 9: a pod with the default dnsPolicy got nameserver %s (CoreDNS) in its resolv.conf, resolved kubernetes.default.svc.%s to %s and Service %s to its ClusterIP %s, its GET http://%s.%s.svc%s reached the nginx pod behind it (%s) from the pod's own address, and the API server answered it at https://kubernetes.default.svc; the pod ran and finished in %s.",
		dnsIP, netDomain, k8sSvc.Spec.ClusterIP, netWeb, svc.Spec.ClusterIP, netWeb, netNS, probePath, webIP, took.Round(100*time.Millisecond))
}

// podLogs returns a pod's (only container's) log through the API.
func (s *suite) podLogs(t *testing.T, ns, pod string) string {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	rc, err := s.cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{}).Stream(ctx)
	if err != nil {
		t.Fatalf("logs of pod %s/%s: %v", ns, pod, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("logs of pod %s/%s: %v", ns, pod, err)
	}
	return string(b)
}

// deleteNetNamespace deletes the step's namespace and, with wait, waits until it is gone.
func (s *suite) deleteNetNamespace(t *testing.T, wait bool) {
	t.Helper()
	ctx, cancel := ctx30()
	err := s.cs.CoreV1().Namespaces().Delete(ctx, netNS, metav1.DeleteOptions{})
	cancel()
	if apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		t.Errorf("deleting namespace %s: %v", netNS, err)
		return
	}
	if !wait {
		return
	}
	waitFor(t, "namespace "+netNS+" gone", waitLong, 500*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		n, err := s.cs.CoreV1().Namespaces().Get(ctx, netNS, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		if err != nil {
			return false, "", err
		}
		return false, "phase " + string(n.Status.Phase), nil
	})
}

// envOr is the environment variable k (the cluster's env file sets it), or def.
func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
