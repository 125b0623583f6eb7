// The kernel's adoption of workers forked before user space knows them: reload, respawn,
// PID namespaces.

package probes

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/bpf"
)

// adoptNewWorkers: nginx forks new workers (mode "reload": SIGHUP; "kill": both workers
// killed with SIGKILL, twice, the second time the workers the kernel itself adopted) and
// requests reach them before anyone calls SetPIDs. The kernel adopts them (their parent,
// the master, is in the filter), so the agent sees exactly what the access log has. Then
// SetPIDs reconciles the filter: the master and the live workers, nothing else.
func adoptNewWorkers(t *testing.T, n *testNginx, mode string) {
	p, c := startProbes(t, n, Options{})
	gw := n.Gateway(t)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	sent := 0
	send := func(tag string, k int) {
		for i := 0; i < k; i++ {
			get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?id=%d&%s", n.Port, sent, tag))
			sent++
		}
	}
	send("before", 10)
	c.waitFor(t, 10, 3*time.Second)
	if st := p.Status(); st.Mode != "ready" {
		t.Fatalf("status %+v", st)
	}
	workers := func() map[int]bool {
		m := map[int]bool{}
		for _, w := range n.Workers() {
			m[w.PID] = true
		}
		return m
	}
	var fresh map[int]bool
	rounds := 1
	if mode == "kill" {
		rounds = 2
	}
	for round := 0; round < rounds; round++ {
		old := workers()
		if mode == "reload" {
			if err := syscall.Kill(n.Master, syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
		} else {
			// A worker logs (and calls free_request) just after the client has its
			// response: let it finish, or the request is neither logged nor seen.
			for deadline := time.Now().Add(3 * time.Second); len(readAccessLog(t, n)) < sent; {
				if time.Now().After(deadline) {
					t.Fatal("access log behind")
				}
				time.Sleep(5 * time.Millisecond)
			}
			for pid := range old {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			// Wait until they are gone (reaped by the master): connections then queue for
			// the workers it forks.
			for deadline := time.Now().Add(5 * time.Second); ; {
				alive := 0
				for pid := range workers() {
					if old[pid] {
						alive++
					}
				}
				if alive == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("killed workers still there")
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		// Requests right away, while the new workers start (and, on reload, the old ones
		// stop accepting); no SetPIDs.
		for deadline := time.Now().Add(10 * time.Second); ; {
			send(fmt.Sprintf("round=%d", round), 5)
			fresh = map[int]bool{}
			ws := workers()
			for pid := range ws {
				if !old[pid] {
					fresh[pid] = true
				}
			}
			if len(fresh) == 2 && len(ws) == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new workers: %v", ws)
			}
		}
		send(fmt.Sprintf("round=%d", round), 20)
	}
	lines, got := settle(t, n, c, 300*time.Millisecond)
	st := p.Status()
	seen := map[string]int{}
	byFresh := 0
	for _, r := range got {
		seen[reqKey(r.URI, r.Method, r.Status)]++
		if fresh[r.PID] {
			byFresh++
		}
	}
	var missing []string
	for _, l := range lines {
		if k := reqKey(l.RequestURI, l.Method, l.Status); seen[k] != 1 {
			missing = append(missing, fmt.Sprintf("%+v", l))
		}
	}
	t.Logf("%s: sent %d, %d log lines, %d agent records (%d from the last new workers %v); status %+v",
		mode, sent, len(lines), len(got), byFresh, fresh, st)
	if len(lines) != sent || len(got) != len(lines) || len(missing) > 0 {
		t.Fatalf("agent and access log disagree: %d log lines, %d records; not seen exactly once: %q", len(lines), len(got), missing)
	}
	if st.AdoptedPIDs == 0 || byFresh == 0 || st.DecodeErrors != 0 || st.Calibration > 10 {
		t.Fatalf("no adoption (%d requests by new workers), status %+v", byFresh, st)
	}
	// Adopted entries carry the master's value (same binary, same load address).
	var mv, wv bpf.NginxReqNginxreqProc
	if err := p.objs.NginxreqProcs.Lookup(uint32(gw.Master.PID), &mv); err != nil {
		t.Fatalf("master not in the filter: %v", err)
	}
	for pid := range fresh {
		if err := p.objs.NginxreqProcs.Lookup(uint32(pid), &wv); err == nil && wv != mv {
			t.Fatalf("adopted worker %d: %+v, master %+v", pid, wv, mv)
		}
	}
	// On reload the old workers exit once idle: wait, then user space reconciles.
	var live []int
	for deadline := time.Now().Add(10 * time.Second); ; {
		live = live[:0]
		for pid := range workers() {
			live = append(live, pid)
		}
		if len(live) == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.SetPIDs(gw.ID(), live)
	if got, want := filterPIDs(t, p), pidSet(append(live, gw.Master.PID)...); got != want {
		t.Fatalf("kernel filter after SetPIDs %s, want %s (master and live workers)", got, want)
	}
	if st := p.Status(); st.TrackedPIDs != 2 {
		t.Fatalf("status after SetPIDs %+v", st)
	}
	p.Untrack(gw.ID())
	if f := filterPIDs(t, p); f != "[]" {
		t.Fatalf("kernel filter after Untrack %s", f)
	}
}

// adoptTest runs in the test's own PID namespace, or inside TestPIDNamespaceAdopt's.
func adoptTest(t *testing.T) bool {
	if e := os.Getenv(innerEnv); e != "" && e != "pidns" {
		t.Skip("inner run")
	}
	requireIntegration(t)
	return true
}

// TestReloadAdoptsWorkers: after `nginx -s reload`, requests served by the new workers before
// SetPIDs are all seen.
func TestReloadAdoptsWorkers(t *testing.T) {
	adoptTest(t)
	n := startNginx(t)
	checkInnerPIDNS(t, n)
	adoptNewWorkers(t, n, "reload")
}

// TestRespawnAdoptsWorkers: workers killed with SIGKILL are respawned by the master; their
// successors' requests are seen before SetPIDs.
func TestRespawnAdoptsWorkers(t *testing.T) {
	adoptTest(t)
	n := startNginx(t)
	checkInnerPIDNS(t, n)
	adoptNewWorkers(t, n, "kill")
}

// TestPIDNamespaceAdopt: both adoption tests with the agent and nginx in a child PID
// namespace (the parent's PID is read at the agent's namespace level).
func TestPIDNamespaceAdopt(t *testing.T) {
	requireOuter(t, "unshare")
	for _, test := range []string{"TestReloadAdoptsWorkers", "TestRespawnAdoptsWorkers"} {
		out := runInner(t, []string{"unshare", "--pid", "--fork", "--mount-proc"}, test, innerEnv+"=pidns")
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "agent records") || strings.Contains(l, "inner pid namespace") {
				t.Log(strings.TrimSpace(l))
			}
		}
	}
}

// TestNginxInChildNamespaceAdopts: the agent in the initial PID namespace, nginx in a
// container's: the parent is found by its global tgid.
func TestNginxInChildNamespaceAdopts(t *testing.T) {
	requireOuter(t, "unshare")
	requireInitialPIDNamespace(t)
	n := startNginxWrapped(t, "unshare", "--pid", "--fork")
	adoptNewWorkers(t, n, "reload")
}
