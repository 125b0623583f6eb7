package probes

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/kong-watcher/kong-watcher/agent/kernel"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// These tests re-run this test binary in a restricted environment (a child PID namespace,
// a reduced capability set) and let the inner run do the real work; the outer run checks
// that the inner one passed.

const innerEnv = "KW_PROBES_INNER"

// gatewayEnv is the prefix of the outer run's gateway, which the inner run attaches to.
const gatewayEnv = "KW_PROBES_GATEWAY"

func runInner(t *testing.T, wrapper []string, test string, env ...string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, wrapper[1:]...), exe, "-test.run", "^"+test+"$", "-test.v", "-test.count=1")
	cmd := exec.Command(wrapper[0], args...)
	cmd.Env = append(append(os.Environ(), "KW_REQUIRE_INTEGRATION=1"), env...)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		cmd.Process.Kill()
		<-done
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: "+test) {
		t.Fatalf("inner %s failed: %v\n%s", test, err, out)
	}
	return string(out)
}

// TestPIDNamespace: the agent and nginx in a child PID namespace (a pod with
// shareProcessNamespace). The kernel filter must match the namespaced PIDs, and the PIDs
// reported must be the ones nginx itself logs ($pid).
func TestPIDNamespace(t *testing.T) {
	requireOuter(t, "unshare")
	out := runInner(t, []string{"unshare", "--pid", "--fork", "--mount-proc"}, "TestAgainstAccessLog",
		innerEnv+"=pidns")
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "compared") || strings.Contains(l, "inner pid namespace") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// checkInnerPIDNS is called by the inner TestAgainstAccessLog.
func checkInnerPIDNS(t *testing.T, n *testNginx) {
	if os.Getenv(innerEnv) != "pidns" {
		return
	}
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil {
		t.Fatal(err)
	}
	if st.Ino == 0xEFFFFFFC || os.Getpid() > 50 || n.Master > 50 {
		t.Fatalf("not in a fresh child PID namespace: ns inode %d, pid %d, nginx %d", st.Ino, os.Getpid(), n.Master)
	}
	t.Logf("inner pid namespace %d: test pid %d, nginx master %d", st.Ino, os.Getpid(), n.Master)
}

// TestCapabilities: the agent with only CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (what the
// webhook grants) loads, attaches with uprobe_multi and sees every request; without
// CAP_PERFMON it fails with an error that names it.
func TestCapabilities(t *testing.T) {
	requireOuter(t, "setpriv")
	n := startNginx(t)
	env := []string{gatewayEnv + "=" + n.g.Prefix}
	setpriv := func(caps string) []string {
		return []string{"setpriv", "--inh-caps=-all," + caps, "--ambient-caps=-all," + caps, "--bounding-set=-all," + caps}
	}
	out := runInner(t, setpriv("+bpf,+perfmon,+sys_ptrace"), "TestCapsInner", append(env, innerEnv+"=caps")...)
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "CapEff") || strings.Contains(l, "compared") {
			t.Log(strings.TrimSpace(l))
		}
	}
	out = runInner(t, setpriv("+bpf,+sys_ptrace"), "TestCapsInner", append(env, innerEnv+"=caps-noperfmon")...)
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "New:") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

func TestCapsInner(t *testing.T) {
	mode := os.Getenv(innerEnv)
	if !strings.HasPrefix(mode, "caps") {
		t.Skip("only run by TestCapabilities")
	}
	eff, err := kernel.EffectiveCaps()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CapEff=%#x", eff)
	if eff&(1<<kernel.CapSysAdmin) != 0 || eff&(1<<kernel.CapBPF) == 0 {
		t.Fatalf("capabilities not reduced: %#x", eff)
	}
	if mode == "caps-noperfmon" {
		_, err := New(Options{Log: testr.New(t)})
		if err == nil || !strings.Contains(err.Error(), "CAP_PERFMON") {
			t.Fatalf("New without CAP_PERFMON: %v; want an error naming CAP_PERFMON", err)
		}
		t.Logf("New: %v", err)
		return
	}
	g, err := fixture.Attach(os.Getenv(gatewayEnv))
	if err != nil {
		t.Fatal(err)
	}
	n := newTestNginx(t, g)
	p, c := startProbes(t, n, Options{})
	if st := p.Status(); st.AttachMethod != kernel.ModeMulti {
		t.Fatalf("attach method %q", st.AttachMethod)
	}
	sent := traffic(t, n, 5)
	checkAgainstLog(t, n, p, c, sent)
}

// TestNginxInChildNamespace: the agent on the host (initial PID namespace), nginx in a
// container's PID namespace. The kernel's namespaced-PID lookup does not apply (nginx's
// namespace is not the agent's), so the filter falls back to global PIDs, which is what an
// agent in the initial namespace sees in /proc.
func TestNginxInChildNamespace(t *testing.T) {
	requireOuter(t, "unshare")
	requireInitialPIDNamespace(t)
	n := startNginxWrapped(t, "unshare", "--pid", "--fork")
	p, c := startProbes(t, n, Options{})
	sent := traffic(t, n, 5)
	hostPIDs := map[int]bool{}
	for _, w := range n.Workers() {
		hostPIDs[w.PID] = true
	}
	pidInLog = func(logPID, agentPID int) bool { return hostPIDs[agentPID] && logPID < 10 }
	defer func() { pidInLog = nil }()
	got := checkAgainstLog(t, n, p, c, sent)
	t.Logf("%d requests; worker host PIDs %v, e.g. request from %d", len(got), hostPIDs, got[0].PID)
}
