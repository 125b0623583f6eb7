package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/kong-watcher/kong-watcher/agent/app"
	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// The whole start path, in process, with its metrics port held by another listener: the agent
// stays up (runAgent does not return) and serves as soon as the port frees. Whether its BPF
// programs load here (root) or not (it then runs disabled), it must behave the same.
func TestRunAgentStaysUpWhileItsPortIsTaken(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	addr := holder.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr bytes.Buffer
	exit := make(chan int, 1)
	go func() {
		exit <- runAgent(ctx, env(map[string]string{
			"METRICS_ADDR": addr, "STATS_INTERVAL": "1h", "LOG_LEVEL": "error",
			// Follow nothing on this machine (other nginx instances run here).
			"KONG_PROCESS_NAME": "kw-none", "KONG_WATCHER_ONLY_PIDS": "2147483647",
		}), &stderr)
	}()

	select {
	case code := <-exit:
		t.Fatalf("the agent exited with %d while its port was taken: %s", code, stderr.String())
	case <-time.After(3 * time.Second):
	}
	holder.Close()
	// Bind attempts back off up to 30 s; the next one after 3 s comes within 4 s more.
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(40 * time.Second)
	for {
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case code := <-exit:
			t.Fatalf("the agent exited with %d: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz not answered 40 s after the port freed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Errorf("exit status %d after stop, want 0", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the agent did not stop 15 s after its context ended")
	}
}

func TestRunAgentRejectsAnInvalidMetricsAddr(t *testing.T) {
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code := runAgent(ctx, env(map[string]string{"METRICS_ADDR": "9464"}), &stderr); code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
	if msg := stderr.String(); !strings.Contains(msg, `METRICS_ADDR="9464"`) || !strings.Contains(msg, "[host]:port") {
		t.Errorf("error %q does not say what is wrong", msg)
	}
}

// The port found taken becomes a Warning Event on the agent's pod, through the Kubernetes
// reporter that records the agent's other Events.
func TestPortTakenIsAWarningEvent(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	addr := holder.Addr().String()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kong", Name: "kong-1", UID: "uid-1"}}
	rec := record.NewFakeRecorder(10)
	rep, err := kube.New(kube.Options{Client: fake.NewClientset(pod), Namespace: "kong", PodName: "kong-1",
		Stats: func() v1alpha1.Stats { return v1alpha1.Stats{} }, Recorder: rec, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); _ = rep.Run(ctx) }()
	app.StartHTTP(ctx, app.HTTPOptions{Addr: addr, Registry: report.NewRegistry(), Notify: portNotifier(rep),
		MaxBindRetry: 100 * time.Millisecond, Log: logr.Discard()})
	select {
	case e := <-rec.Events:
		if !strings.HasPrefix(e, "Warning MetricsPortUnavailable cannot listen on "+addr) || !strings.Contains(e, "address already in use") {
			t.Errorf("Event %q", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Event while the port is taken")
	}
	time.Sleep(500 * time.Millisecond) // several more attempts: still one Event
	if n := len(rec.Events); n != 0 {
		t.Errorf("%d more Events, want one per 10 minutes", n)
	}
	if portNotifier(nil) != nil {
		t.Error("portNotifier(nil) is not a nil interface: StartHTTP would call a nil reporter")
	}
}
