package integration

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// runInPIDNamespace re-runs the calling test inside `unshare --pid --fork --mount-proc`
// and reports whether the caller is that inner run (and should do the work). The outer run
// fails if the inner one fails. Inside, the gateway and the agent see only each other, as in
// a pod with shareProcessNamespace, and the PIDs the agent sees are not the kernel's.
func runInPIDNamespace(t *testing.T) bool {
	t.Helper()
	if os.Getenv("KW_INSIDE_PIDNS") == t.Name() {
		if os.Getpid() > 100 {
			t.Fatalf("expected to run in a fresh PID namespace, my PID is %d", os.Getpid())
		}
		if b := os.Getenv("KW_AGENT_BIN"); b != "" {
			buildOnce.Do(func() { agentBin = b })
		}
		return true
	}
	fixture.RequireRoot(t)
	fixture.RequireNginx(t)
	fixture.RequireCommand(t, "unshare")
	agentBinary(t) // build outside; the inner run reuses it through the environment
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--mount-proc", self,
		"-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "KW_INSIDE_PIDNS="+t.Name(), "KW_AGENT_BIN="+agentBin)
	out, err := cmd.CombinedOutput()
	t.Logf("inside the PID namespace:\n%s", tail(string(out), 8000))
	if err != nil {
		t.Fatalf("the test inside the PID namespace failed: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatal("the inner test did not pass")
	}
	return false
}

// TestAgentInOwnPIDNamespace: the whole agreement check, in a PID namespace of its own.
func TestAgentInOwnPIDNamespace(t *testing.T) {
	if !runInPIDNamespace(t) {
		return
	}
	gw := fixture.StartT(t, fixture.Options{Workers: 2})
	a := startAgent(t, 0, nil)
	a.waitReady(t, 20*time.Second)
	driveAndCompare(t, gw, a, 200)
}

// TestAgentLeastPrivilege runs the agent with only CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE,
// as the injected sidecar has them, and checks it still counts exactly.
func TestAgentLeastPrivilege(t *testing.T) {
	fixture.RequireRoot(t)
	fixture.RequireCommand(t, "setpriv")
	gw := fixture.StartT(t, fixture.Options{Workers: 2})
	caps := "-all,+bpf,+perfmon,+sys_ptrace"
	wrapper := []string{"setpriv", "--inh-caps=" + caps, "--ambient-caps=" + caps, "--bounding-set=" + caps, "--"}
	a := startAgent(t, gw.MasterPID(), wrapper)
	a.waitReady(t, 20*time.Second)
	driveAndCompare(t, gw, a, 150)
	if strings.Contains(a.log.String(), "perf") && strings.Contains(a.log.String(), "permission denied") {
		t.Errorf("the agent hit a permission error:\n%s", tail(a.log.String(), 3000))
	}
}

// TestAgentWithoutCapabilitiesSaysWhy: with no BPF capability at all the agent must not
// count anything, must name the missing capability, and must stay up (a sidecar that exits is
// restarted in a back-off loop and keeps the whole pod, Kong included, NotReady): /healthz
// answers 200, /readyz 503 with the reason.
func TestAgentWithoutCapabilitiesSaysWhy(t *testing.T) {
	fixture.RequireRoot(t)
	fixture.RequireCommand(t, "setpriv")
	gw := fixture.StartT(t, fixture.Options{Workers: 1})
	caps := "-all,+sys_ptrace"
	wrapper := []string{"setpriv", "--inh-caps=" + caps, "--ambient-caps=" + caps, "--bounding-set=" + caps, "--"}
	a := startAgent(t, gw.MasterPID(), wrapper)
	a.waitHealthy(t, 20*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(a.log.String(), "CAP_BPF") {
		if time.Now().After(deadline) {
			t.Fatalf("the agent never named CAP_BPF as missing:\n%s", tail(a.log.String(), 3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Still up a while later, and unready with the reason.
	time.Sleep(time.Second)
	select {
	case <-a.done:
		t.Fatalf("the agent exited: %v\n%s", a.cmd.ProcessState, tail(a.log.String(), 3000))
	default:
	}
	resp, err := http.Get("http://" + a.addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "CAP_BPF") {
		t.Errorf("/readyz: %d %q, want 503 naming CAP_BPF", resp.StatusCode, body)
	}
}

// TestGatewayAppearsLater: the agent starts first (as a native sidecar does), the gateway
// later; the agent must pick it up and count exactly from then on; then the gateway stops
// (the agent becomes unready and keeps running) and a new one starts and is counted too.
func TestGatewayAppearsLater(t *testing.T) {
	if !runInPIDNamespace(t) {
		return
	}
	a := startAgent(t, 0, nil)
	a.waitHealthy(t, 20*time.Second)
	time.Sleep(1500 * time.Millisecond) // a few discovery rounds with nothing to find
	if code := a.readyz(t); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with no gateway: %d, want 503", code)
	}
	for round := 0; round < 2; round++ {
		gw, err := fixture.Start(context.Background(), fixture.Options{Dir: t.TempDir(), Workers: 1})
		if err != nil {
			t.Fatal(err)
		}
		a.waitReady(t, 20*time.Second)
		before := a.stats(t).Total
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		sent, _ := gw.DriveMixed(ctx, 60, 2)
		es, err := gw.WaitAccessLog(ctx, sent.Total())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		s := a.waitRequests(t, before.Requests+uint64(len(es)), 15*time.Second)
		if got := s.Total.Requests - before.Requests; got != uint64(len(es)) {
			t.Errorf("round %d: agent counted %d requests, access log has %d", round, got, len(es))
		}
		if err := gw.Stop(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for a.readyz(t) != http.StatusServiceUnavailable && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if code := a.readyz(t); code != http.StatusServiceUnavailable {
			t.Errorf("round %d: /readyz after the gateway stopped: %d, want 503", round, code)
		}
	}
}

// TestKillAgentUnderLoad: SIGKILL of the agent while the gateway serves must not disturb
// the gateway: every request still answers.
func TestKillAgentUnderLoad(t *testing.T) {
	gw := fixture.StartT(t, fixture.Options{Workers: 2})
	a := startAgent(t, gw.MasterPID(), nil)
	a.waitReady(t, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := gw.DriveMixed(ctx, 600, 4)
		errc <- err
	}()
	time.Sleep(300 * time.Millisecond)
	a.cmd.Process.Signal(syscall.SIGKILL)
	<-a.done
	if err := <-errc; err != nil {
		t.Errorf("traffic while the agent was killed: %v", err)
	}
	c := gw.Client(fixture.HTTP1)
	resp, err := c.Get(gw.URL(fixture.HTTP1, "api.kong.test", "/fast"))
	if err != nil {
		t.Fatalf("gateway after the agent's death: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("gateway after the agent's death: HTTP %d", resp.StatusCode)
	}
}
