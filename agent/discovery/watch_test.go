package discovery

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func describe(e Event) string {
	return fmt.Sprintf("%v %d/%d %v", e.Kind, e.Gateway.Master.PID, e.Gateway.Master.StartTime, e.Gateway.PIDs())
}

// TestDiff walks a gateway through its life on a fake /proc tree.
func TestDiff(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "bin")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	s := Scanner{ProcRoot: root}
	master := func(pid int, start uint64) fakeProc {
		return fakeProc{pid: pid, ppid: 1, comm: "nginx", start: start, cmdline: padded("nginx: master process nginx"), exe: bin}
	}
	worker := func(pid, ppid int, t string) fakeProc {
		return fakeProc{pid: pid, ppid: ppid, comm: "nginx", start: uint64(pid), cmdline: padded(t), exe: bin}
	}
	rm := func(pid int) { os.RemoveAll(filepath.Join(root, fmt.Sprint(pid))) }

	var got []string
	known := map[GatewayID]Gateway{}
	step := func(want ...string) {
		t.Helper()
		got = nil
		gs, err := s.Scan()
		if err != nil {
			t.Fatal(err)
		}
		known = diff(known, gs, func(e Event) { got = append(got, describe(e)) })
		if !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("events %q, want %q", got, want)
		}
	}

	step()
	writeFakeProc(t, root, []fakeProc{master(10, 100), worker(11, 10, "nginx: worker process"), worker(12, 10, "nginx: worker process")})
	step("Added 10/100 [11 12]")
	step() // nothing changed
	// Reload: new workers start, old ones are retired, then exit.
	rm(11)
	rm(12)
	writeFakeProc(t, root, []fakeProc{worker(11, 10, "nginx: worker process is shutting down"),
		worker(12, 10, "nginx: worker process is shutting down"), worker(13, 10, "nginx: worker process"),
		worker(14, 10, "nginx: worker process")})
	step("Changed 10/100 [11 12 13 14]")
	rm(11)
	rm(12)
	step("Changed 10/100 [13 14]")
	// A worker crashes and is respawned.
	rm(13)
	writeFakeProc(t, root, []fakeProc{worker(15, 10, "nginx: worker process")})
	step("Changed 10/100 [14 15]")
	// A second gateway appears while the first restarts under the same PID.
	rm(10)
	rm(14)
	rm(15)
	writeFakeProc(t, root, []fakeProc{master(10, 500), worker(16, 10, "nginx: worker process"), master(20, 600)})
	step("Removed 10/100 [14 15]", "Added 10/500 [16]", "Added 20/600 [20]")
	rm(10)
	rm(16)
	rm(20)
	step("Removed 10/500 [16]", "Removed 20/600 [20]")
}

func TestWatchPolls(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "bin")
	os.WriteFile(bin, []byte("x"), 0o755)
	writeFakeProc(t, root, []fakeProc{{pid: 10, ppid: 1, comm: "nginx", start: 1, cmdline: padded("nginx: master process"), exe: bin}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	events := make(chan Event, 10)
	done := make(chan struct{})
	go func() {
		Watch(ctx, Scanner{ProcRoot: root}, 10*time.Millisecond, func(e Event) { events <- e })
		close(done)
	}()
	if e := <-events; e.Kind != Added || e.Gateway.Master.PID != 10 {
		t.Fatalf("first event %v", describe(e))
	}
	writeFakeProc(t, root, []fakeProc{{pid: 11, ppid: 10, comm: "nginx", start: 2, cmdline: padded("nginx: worker process"), exe: bin}})
	if e := <-events; e.Kind != Changed || !reflect.DeepEqual(e.Gateway.PIDs(), []int{11}) {
		t.Fatalf("second event %v", describe(e))
	}
	// An unreadable /proc is not "everything was removed".
	os.Rename(root, root+".moved")
	defer os.Rename(root+".moved", root)
	select {
	case e := <-events:
		t.Fatalf("event %v while /proc is unreadable", describe(e))
	case <-time.After(100 * time.Millisecond):
	}
	cancel()
	<-done
}
