package discovery

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"
)

// TestCachePIDReuse follows PIDs through exits and reuse with one cache, as Watch does.
func TestCachePIDReuse(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "bin")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := newProcCache(Scanner{ProcRoot: root})
	defer c.close()
	rm := func(pids ...int) {
		for _, pid := range pids {
			os.RemoveAll(filepath.Join(root, fmt.Sprint(pid)))
		}
	}
	scan := func(want ...summary) []Gateway {
		t.Helper()
		gs, err := c.scan()
		if err != nil {
			t.Fatal(err)
		}
		if got := summarize(gs); !reflect.DeepEqual(got, want) && (len(got) != 0 || len(want) != 0) {
			t.Fatalf("gateways %+v, want %+v", got, want)
		}
		return gs
	}

	writeFakeProc(t, root, []fakeProc{
		{pid: 10, ppid: 1, comm: "nginx", start: 100, cmdline: padded("nginx: master process old"), exe: bin},
		{pid: 11, ppid: 10, comm: "nginx", start: 101, cmdline: padded("nginx: worker process"), exe: bin},
		{pid: 30, ppid: 1, comm: "java", start: 102, cmdline: title("java")},
	})
	scan(summary{master: 10, workers: []int{11}})

	// The gateway exits; its master's PID goes to a new master, the worker's to a process
	// of another name, and the other process's to a worker of the new master.
	rm(10, 11, 30)
	writeFakeProc(t, root, []fakeProc{
		{pid: 10, ppid: 1, comm: "nginx", start: 500, cmdline: padded("nginx: master process new"), exe: bin},
		{pid: 11, ppid: 1, comm: "java", start: 501, cmdline: title("java")},
		{pid: 30, ppid: 10, comm: "nginx", start: 502, cmdline: padded("nginx: worker process"), exe: bin},
	})
	gs := scan(summary{master: 10, workers: []int{30}})
	if m := gs[0].Master; m.StartTime != 500 || m.Title != "nginx: master process new" {
		t.Errorf("reused master PID: %+v", m)
	}

	// A worker retired by a reload: same process, new title.
	rm(30)
	writeFakeProc(t, root, []fakeProc{{pid: 30, ppid: 10, comm: "nginx", start: 502,
		cmdline: padded("nginx: worker process is shutting down"), exe: bin}})
	if gs := scan(summary{master: 10, workers: []int{30}, down: []int{30}}); gs[0].Workers[0].StartTime != 502 {
		t.Errorf("worker %+v", gs[0].Workers[0])
	}

	rm(10, 11, 30)
	scan()
	if len(c.entries) != 0 {
		t.Errorf("%d entries left for PIDs that are gone", len(c.entries))
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc")
	}
	return len(fds)
}

// TestCacheRealProc checks on this machine's /proc what the cache relies on: a process
// found after it execs under the same PID, its descriptors closed once it exits, none
// left open by close.
func TestCacheRealProc(t *testing.T) {
	before := openFDs(t)
	// The child is "sh" until it reads a line, then execs "sleep".
	child := exec.Command("sh", "-c", "read _; exec sleep 60")
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Skip(err)
	}
	defer child.Process.Kill()
	pid := child.Process.Pid

	c := newProcCache(Scanner{Name: "sleep"})
	found := func() bool {
		t.Helper()
		gs, err := c.scan()
		if gs == nil && err != nil {
			t.Fatal(err)
		}
		for _, g := range gs {
			if g.Master.PID == pid {
				return true
			}
		}
		return false
	}
	if found() {
		t.Fatal("found before exec")
	}
	e := c.entries[pid]
	if e == nil || e.commFD < 0 || !c.hold {
		t.Fatalf("child %d: entry %+v, holding %v", pid, e, c.hold)
	}
	io.WriteString(stdin, "go\n")
	for deadline := time.Now().Add(10 * time.Second); !found(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not found after exec")
		}
	}
	if c.entries[pid] != e || e.commFD < 0 || e.statFD < 0 || e.cmdlineFD < 0 {
		t.Errorf("entry after exec %+v", e)
	}

	// A descriptor of an exited process fails, so a reused PID is never read through it.
	fd, err := syscall.Open(fmt.Sprintf("/proc/%d/comm", pid), syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	child.Process.Kill()
	child.Wait()
	if _, err := syscall.Pread(fd, make([]byte, 64), 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("reading an exited process's comm: %v, want ESRCH", err)
	}
	if found() || c.entries[pid] != nil {
		t.Errorf("child %d still known after it exited", pid)
	}
	c.close()
	if after := openFDs(t) - 1; after != before { // fd: the one opened above
		t.Errorf("%d descriptors open after close, %d before", after, before)
	}
}
