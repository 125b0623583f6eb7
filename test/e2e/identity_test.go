//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// ---------------------------------------------------------------------------------------
// Step 4: the label was the whole opt-in. Kong's service account holds no rights; the
// statistics were written by the manager; the agent's report token opens nothing in the API
// server, and cannot speak for another pod to the manager; the Deployment shows its pods'
// combined stats.

func (s *suite) stepIdentity(t *testing.T) {
	podA, podB := s.pod(t, s.gatewayPods[0]), s.pod(t, s.gatewayPods[1])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// No Role or RoleBinding anywhere names Kong's service account.
	rbs, err := s.cs.RbacV1().RoleBindings("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rb := range rbs.Items {
		for _, sub := range rb.Subjects {
			if sub.Kind == "ServiceAccount" && sub.Name == kongSA && sub.Namespace == kongNS {
				t.Errorf("RoleBinding %s/%s binds Kong's service account: the label must be the whole opt-in", rb.Namespace, rb.Name)
			}
		}
	}
	// kubectl auth can-i, as a person would check it.
	as := "system:serviceaccount:" + kongNS + ":" + kongSA
	for _, c := range [][2]string{{"get", "pods"}, {"patch", "pods"}, {"create", "events"}, {"create", "events.events.k8s.io"},
		{"create", "tokenreviews.authentication.k8s.io"}} {
		out, _ := s.kubectl(t, 30*time.Second, "auth", "can-i", c[0], c[1], "-n", kongNS, "--as", as)
		if got := strings.TrimSpace(out); got != "no" {
			t.Errorf("kubectl auth can-i %s %s --as %s: %q, want no", c[0], c[1], as, got)
		} else {
			t.Logf("kubectl auth can-i %s %s -n %s --as %s: no", c[0], c[1], kongNS, as)
		}
	}

	// The statistics on pod A were written by the manager, not by anything in the pod.
	writer := ""
	for _, mf := range podA.ManagedFields {
		if mf.FieldsV1 != nil && bytes.Contains(mf.FieldsV1.Raw, []byte(`"f:`+kwv1.AnnotationRequests+`"`)) {
			writer = mf.Manager
		}
	}
	if writer != "kong-watcher-manager" {
		t.Errorf("pod %s: %s written by %q, want the manager (kong-watcher-manager)", podA.Name, kwv1.AnnotationRequests, writer)
	}

	// The agent's token (audience kong-watcher.io/manager, bound to pod A) is refused by the API
	// server: it is not an API credential.
	token := s.podToken(t, podA, kwv1.ReportAudience)
	cfg := rest.AnonymousClientConfig(s.cfg)
	cfg.BearerToken = token
	agentAPI, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = agentAPI.CoreV1().Pods(kongNS).Get(ctx, podA.Name, metav1.GetOptions{})
	if !apierrors.IsUnauthorized(err) {
		t.Errorf("the API server with the agent's report token: %v, want 401 Unauthorized", err)
	} else {
		t.Logf("the API server refuses the agent's report token: %v", err)
	}

	// Through the manager's Service (kube-proxy, as the agents reach it): pod A's token in a
	// report claiming pod B is refused, and nothing of it reaches pod B.
	const marker = "forged-by-e2e"
	status, body := s.postReport(t, token, kwv1.Report{APIVersion: kwv1.StatsAPIVersion, Kind: kwv1.ReportKind,
		Pod:   kwv1.PodRef{Namespace: kongNS, Name: podB.Name},
		Stats: &kwv1.Stats{APIVersion: kwv1.StatsAPIVersion, Kind: kwv1.StatsKind, DataPath: marker}})
	if status != http.StatusForbidden {
		t.Errorf("a report with pod %s's token claiming pod %s: %d %s, want 403", podA.Name, podB.Name, status, body)
	} else {
		t.Logf("a report with pod %s's token claiming pod %s: %d %s", podA.Name, podB.Name, status, strings.TrimSpace(body))
	}
	status, body = s.postReport(t, "not-a-token", kwv1.Report{APIVersion: kwv1.StatsAPIVersion, Kind: kwv1.ReportKind,
		Pod: kwv1.PodRef{Namespace: kongNS, Name: podB.Name}})
	if status != http.StatusUnauthorized {
		t.Errorf("a report with a garbage token: %d %s, want 401", status, body)
	}
	if st := s.pod(t, podB.Name).Annotations[kwv1.AnnotationStats]; strings.Contains(st, marker) {
		t.Errorf("pod %s's stats carry the forged report: %s", podB.Name, st)
	}

	// The Deployment: its pods' stats combined by the manager.
	var dep string
	waitFor(t, "the Deployment's combined stats ("+kwv1.AnnotationPods+": 2 of 2)", waitShort, time.Second,
		func(ctx context.Context) (bool, string, error) {
			d, err := s.cs.AppsV1().Deployments(kongNS).Get(ctx, gatewayDeploy, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			dep = d.Annotations[kwv1.AnnotationPods]
			return strings.HasPrefix(dep, "2 of 2") && d.Annotations[kwv1.AnnotationRequests] != "", "pods: " + dep, nil
		})
	out := s.mustKubectl(t, 30*time.Second, "describe", "deployment", gatewayDeploy, "-n", kongNS)
	for _, k := range []string{kwv1.AnnotationRequests, kwv1.AnnotationLatency, kwv1.AnnotationPods} {
		if !strings.Contains(out, k) {
			t.Errorf("kubectl describe deployment %s shows no %s:\n%s", gatewayDeploy, k, out)
		}
	}
	s.describeDeployment = out
}

// podToken is a TokenRequest of Kong's service account bound to pod, for audience.
func (s *suite) podToken(t *testing.T, pod *corev1.Pod, audience string) string {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	exp := int64(600)
	tr, err := s.cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp, Audiences: []string{audience},
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest bound to pod %s: %v", pod.Name, err)
	}
	return tr.Status.Token
}

// postReport sends rep to the manager through its Service's cluster IP, verifying the manager
// with the CA from its Secret exactly as an agent does; it returns the status and body.
func (s *suite) postReport(t *testing.T, token string, rep kwv1.Report) (int, string) {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	sec, err := s.cs.CoreV1().Secrets(systemNS).Get(ctx, webhookSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(sec.Data["ca.crt"]) {
		t.Fatalf("no CA in secret %s", webhookSecret)
	}
	svc, err := s.cs.CoreV1().Services(systemNS).Get(ctx, webhookService, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	host := webhookService + "." + systemNS + ".svc"
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: host},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort(svc.Spec.ClusterIP, "443"))
		},
	}}
	payload, _ := json.Marshal(rep)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+host+kwv1.ReportPath, bytes.NewReader(payload))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s through the Service's cluster IP %s: %v", kwv1.ReportPath, svc.Spec.ClusterIP, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, fmt.Sprint(string(b))
}
