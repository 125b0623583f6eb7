package wire

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// heapInUse is the live Go heap: collected first, so garbage not yet collected does not count.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// TestIntegrationSlowloris holds 10,000 slowloris connections open against a real nginx, each
// with a 7 KiB request head that never ends and grows a byte at a time, while real requests
// are sent: the tracer's Go heap must stay bounded (the agent container's limit is 256 Mi;
// unbounded, these heads alone hold ~100 MiB), and the real requests must be reported
// exactly as nginx logs them.
func TestIntegrationSlowloris(t *testing.T) {
	havePrereqs(t, "nginx")
	const (
		nSlow = 10000
		// The bound asserted on the tracer's heap growth: its connections' fixed state plus
		// the default budget (8 MiB) fit well inside it.
		maxGrowth = 64 << 20
	)
	// The soft limit up to the hard one (raising that takes CAP_SYS_RESOURCE): room for the
	// connections and the test's other files; nginx, started from here, inherits it.
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	want := unix.Rlimit{Cur: max(lim.Cur, min(lim.Max, 3*nSlow)), Max: lim.Max}
	if want.Max < 3*nSlow {
		if raised := (unix.Rlimit{Cur: 3 * nSlow, Max: 3 * nSlow}); unix.Setrlimit(unix.RLIMIT_NOFILE, &raised) == nil {
			want = raised
		}
	}
	fixture.Require(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &want) == nil && want.Cur >= nSlow+2000,
		fmt.Sprintf("RLIMIT_NOFILE of at least %d (hard limit %d)", nSlow+2000, lim.Max))
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &lim) })

	// nginx waits for the heads as long as the test lasts (client_header_timeout), and has
	// room for them all in either worker.
	ng := startNginxWith(t, nginxOptions{workerConnections: nSlow + 1000, rlimitNofile: int(want.Cur),
		server: "client_header_timeout 10m;"})
	tr, err := New(Options{Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Track(ng.gateway(t)); err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- tr.Run(ctx, col) }()
	defer func() { cancel(); <-runDone }()

	// Paced so the ring buffer's reader keeps up however loaded the machine is: what nginx
	// read so far is mostly consumed before more is sent.
	drain := func() {
		for deadline := time.Now().Add(10 * time.Second); tr.ring.AvailableBytes() > 1<<20 && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	before := heapInUse()
	peak := before
	sample := func() {
		if h := heapInUse(); h > peak {
			peak = h
		}
	}

	// Raw sockets: the test's own heap does not grow with the connections.
	fds := make([]int, 0, nSlow)
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
		fds = fds[:0]
	}
	defer closeAll()
	addr := &unix.SockaddrInet4{Port: ng.plain, Addr: [4]byte{127, 0, 0, 1}}
	pad := strings.Repeat("a", 7000)
	for i := 0; i < nSlow; i++ {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("socket %d: %v", i, err)
		}
		fds = append(fds, fd)
		if err := unix.Connect(fd, addr); err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		head := fmt.Sprintf("GET /slowloris/%05d HTTP/1.1\r\nHost: slow.example\r\nX-Pad: %s", i, pad)
		if _, err := unix.Write(fd, []byte(head)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if i%100 == 99 {
			time.Sleep(20 * time.Millisecond)
			drain()
		}
		if i%1000 == 999 {
			sample()
		}
	}
	afterOpen := tr.Status()
	t.Logf("%d slowloris connections open: heap in use %d MiB -> %d MiB; parser %+v; events %d, dropped %d",
		nSlow, before>>20, peak>>20, afterOpen.ParserStats, afterOpen.Events, afterOpen.Dropped)

	// Real requests while every slowloris connection trickles a byte at a time: keep-alive
	// GETs, heads too large for one captured event (they are buffered, under the budget the
	// slowloris heads exhausted), POSTs with bodies, new connections.
	realDone := make(chan error, 1)
	go func() {
		client := &http.Client{Timeout: 30 * time.Second}
		defer client.CloseIdleConnections()
		base := fmt.Sprintf("http://127.0.0.1:%d", ng.plain)
		cookie := strings.Repeat("c", 3000)
		for i := 0; i < 240; i++ {
			var req *http.Request
			switch i % 4 {
			case 0, 1:
				req, _ = http.NewRequest("GET", fmt.Sprintf("%s/real/get/%d", base, i), nil)
			case 2:
				req, _ = http.NewRequest("GET", fmt.Sprintf("%s/real/cookie/%d", base, i), nil)
				req.Header.Set("Cookie", cookie)
			case 3:
				req, _ = http.NewRequest("POST", fmt.Sprintf("%s/real/post/%d", base, i), strings.NewReader(strings.Repeat("p", 2000)))
				req.Close = i%8 == 7
			}
			resp, err := client.Do(req)
			if err != nil {
				realDone <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		realDone <- nil
	}()
	rounds := 0
	for done := false; !done || rounds < 3; rounds++ {
		for i, fd := range fds {
			if _, err := unix.Write(fd, []byte("a")); err != nil {
				t.Fatalf("trickle to connection %d: %v", i, err)
			}
			if i%1000 == 999 {
				time.Sleep(20 * time.Millisecond)
				drain()
			}
		}
		sample()
		select {
		case err := <-realDone:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		default:
		}
	}

	// The real requests, as the wire reported them and as nginx logged them.
	key := func(m, u string, s int, b uint64) string { return fmt.Sprintf("%s %s %d %d", m, u, s, b) }
	var got, logged []string
	var other []*model.Request
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, logged, other = got[:0], logged[:0], other[:0]
		for _, r := range col.snapshot() {
			if strings.HasPrefix(r.URI, "/real/") {
				got = append(got, key(r.Method, r.URI, r.Status, r.BytesSent))
			} else {
				other = append(other, r)
			}
		}
		for _, l := range ng.accessLog(t) {
			if strings.HasPrefix(l.RequestURI, "/real/") {
				logged = append(logged, key(l.Method, l.RequestURI, l.Status, l.BytesSent))
			}
		}
		if len(logged) == 240 && len(got) >= len(logged) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	sample()
	time.Sleep(300 * time.Millisecond) // anything extra would show up now
	st := tr.Status()
	sort.Strings(got)
	sort.Strings(logged)
	t.Logf("%d trickle rounds; real requests: %d in the access log, %d reported", rounds, len(logged), len(got))
	t.Logf("heap in use before %d MiB, peak %d MiB: growth %.1f MiB (bound %d MiB); fixed state %d bytes per connection",
		before>>20, peak>>20, float64(peak-before)/(1<<20), maxGrowth>>20, unsafe.Sizeof(conn{}))
	t.Logf("parser %+v; events %d, dropped %d, bad records %d", st.ParserStats, st.Events, st.Dropped, st.BadRecords)
	if peak-before > maxGrowth {
		t.Errorf("heap grew by %d MiB with %d slowloris connections, bound %d MiB", (peak-before)>>20, nSlow, maxGrowth>>20)
	}
	if st.OverBudget == 0 || st.Buffered > tr.opts.MaxBufferedBytes {
		t.Errorf("the slowloris heads should have exhausted the budget, and it held: %+v", st.ParserStats)
	}
	if strings.Join(got, "\n") != strings.Join(logged, "\n") {
		t.Errorf("real requests reported (%d) differ from the access log (%d); %d events dropped\nreported:\n%s\nlogged:\n%s",
			len(got), len(logged), st.Dropped, strings.Join(got, "\n"), strings.Join(logged, "\n"))
	}
	for _, r := range other {
		t.Errorf("reported a request that is not a real one: %s %s %d", r.Method, r.URI, r.Status)
	}

	// The slowloris clients go away: so does what the parser held for them.
	closeAll()
	deadline = time.Now().Add(30 * time.Second)
	for {
		st = tr.Status()
		if st.Conns == 0 && st.Buffered == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st.Conns != 0 || st.Buffered != 0 {
		t.Errorf("after the slowloris connections closed: %+v", st.ParserStats)
	}
}
