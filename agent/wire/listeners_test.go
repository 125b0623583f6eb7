package wire

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// A connection's requests carry the listener it was accepted from; a TLS session its
// socket's; a connection whose accept was not seen is resolved once, at its first request; an
// fd accepted again while the parser holds it (its close lost) starts a new connection.
func TestParserListeners(t *testing.T) {
	h := newHarness(t)
	resolved := 0
	h.p.Resolve = func(k ConnKey) Listener { resolved++; return Listener{Port: 9000, Known: true} }
	exchange := func(k ConnKey) {
		h.k = k
		h.in("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
		h.out1(ok5)
	}
	plain, tlsConn, old := ConnKey{TGID: 42, ID: 7}, ConnKey{TGID: 42, TLS: true, ID: 0xbeef}, ConnKey{TGID: 42, ID: 9}
	h.p.Accept(plain, Listener{Port: 8000, Known: true}, h.at())
	exchange(plain)
	h.p.Accept(ConnKey{TGID: 42, ID: 8}, Listener{Port: 8443, Known: true}, h.at())
	l, ok := h.p.ListenerOf(ConnKey{TGID: 42, ID: 8})
	h.p.Accept(tlsConn, l, h.at())
	exchange(tlsConn)
	exchange(old)
	exchange(old)
	// fd 7's close was lost: accepted again, from another listener, with a request pending.
	h.k = plain
	h.in("GET /pending HTTP/1.1\r\nHost: a\r\n\r\n")
	h.p.Accept(plain, Listener{Unix: true, Known: true}, h.at())
	exchange(plain)
	var got []string
	for _, r := range h.out {
		got = append(got, fmt.Sprintf("%s %d %d %v %v", r.URI, r.Status, r.LocalPort, r.UnixListener, r.ListenerKnown))
	}
	want := []string{"/ 200 8000 false true", "/ 200 8443 false true", "/ 200 9000 false true", "/ 200 9000 false true",
		"/pending 0 8000 false true", "/ 200 0 true true"}
	if !ok || fmt.Sprint(got) != fmt.Sprint(want) || resolved != 1 {
		t.Errorf("requests %q, resolved %d times; want %q, once", got, resolved, want)
	}
}

// The listener of a socket: its inode from /proc/<pid>/fd, its port from
// /proc/<pid>/net/tcp or tcp6, a unix socket from /proc/<pid>/net/unix; one scan of a
// worker's tables serves every listening socket in them.
func TestListenersFromProc(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "42")
	for _, d := range []string{"fd", "net"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for fd, target := range map[int]string{6: "socket:[1001]", 7: "socket:[1002]", 8: "socket:[1003]", 9: "/dev/null", 10: "socket:[1999]"} {
		if err := os.Symlink(target, filepath.Join(dir, "fd", fmt.Sprint(fd))); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"tcp": "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
			"   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0\n",
		"tcp6": "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
			"   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0\n",
		"unix": "Num       RefCount Protocol Flags    Type St Inode Path\n" +
			"0000000000000000: 00000002 00000000 00010000 0001 01 1003 /kong/worker_events.sock\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, "net", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ls := newListeners(root)
	for _, c := range []struct {
		fd   uint32
		want Listener
	}{{6, Listener{Port: 8000, Known: true}}, {7, Listener{Port: 8443, Known: true}}, {8, Listener{Unix: true, Known: true}}, {9, Listener{}}, {10, Listener{}}, {11, Listener{}}} {
		if got := ls.listening(42, c.fd); got != c.want {
			t.Errorf("fd %d: %+v, want %+v", c.fd, got, c.want)
		}
	}
	for range 3 {
		ls.listening(42, 6)
		ls.listening(42, 7)
	}
	// fd 6's scan found 7 and 8 too; the unknown socket 1999 made one more.
	if ls.Lookups != 2 {
		t.Errorf("%d scans of /proc/42/net, want 2", ls.Lookups)
	}
	ls.forget(func(pid uint32) bool { return pid != 42 })
	if len(ls.byFD) != 0 {
		t.Errorf("%d listening sockets kept of a process gone", len(ls.byFD))
	}
}
