package wire

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

// checkAccounting verifies the parser's total against what its connections hold, and the bound.
func checkAccounting(t testing.TB, p *Parser) {
	t.Helper()
	var sum int64
	for _, c := range p.conns {
		if m := c.memory(); m != c.mem {
			t.Fatalf("conn %+v holds %d, accounted %d", c.key, m, c.mem)
		}
		sum += c.mem
	}
	if sum != p.used || int64(p.holders.Len()) > int64(len(p.conns)) {
		t.Fatalf("connections hold %d, parser accounts %d (%d holders of %d)", sum, p.used, p.holders.Len(), len(p.conns))
	}
	if p.used > p.MaxBuffered {
		t.Fatalf("%d bytes held, budget %d", p.used, p.MaxBuffered)
	}
}

// Thousands of slowloris connections, each a head trickling in and never ending: the parser
// holds at most its budget, gives up the oldest heads first, and a real request whose head
// arrives in pieces in the middle of it all is still reported exactly.
func TestBudgetSlowloris(t *testing.T) {
	var out []*model.Request
	p := NewParser(20000, func(r *model.Request) { out = append(out, r) })
	p.MaxBuffered = 256 << 10
	var gaveUp int
	p.OnGiveUp = func(k ConnKey, reason string, lost int) {
		gaveUp++
		if lost != 0 || !strings.Contains(reason, "budget") {
			t.Fatalf("gave up %+v: %s, %d lost", k, reason, lost)
		}
	}
	ts := t0
	at := func() time.Time { ts = ts.Add(time.Millisecond); return ts }
	const n = 5000
	pad := strings.Repeat("a", 1000)
	for i := 0; i < n; i++ {
		k := ConnKey{TGID: 1, ID: uint64(i)}
		p.Feed(Chunk{Key: k, TS: at(), Data: []byte(fmt.Sprintf("GET /slow/%d HTTP/1.1\r\nHost: slow\r\nX-Pad: %s", i, pad))})
	}
	checkAccounting(t, p)
	if s := p.Stats(); s.Buffered < p.MaxBuffered/2 || s.OverBudget == 0 || s.Conns != n {
		t.Fatalf("want the budget used and the oldest heads given up: %+v", s)
	}
	// The trickle: a byte at a time on every connection.
	for round := 0; round < 3; round++ {
		for i := 0; i < n; i++ {
			p.Feed(Chunk{Key: ConnKey{TGID: 1, ID: uint64(i)}, TS: at(), Data: []byte("a")})
		}
		checkAccounting(t, p)
	}
	// A real request, its head in three pieces (a big cookie), amid the trickle.
	real := ConnKey{TGID: 1, ID: 1 << 20}
	head := "GET /real HTTP/1.1\r\nHost: real.example\r\nCookie: " + strings.Repeat("c", 2500) + "\r\n\r\n"
	for i := 0; i < len(head); i += 1024 {
		p.Feed(Chunk{Key: real, TS: at(), Data: []byte(head[i:min(i+1024, len(head))])})
		p.Feed(Chunk{Key: ConnKey{TGID: 1, ID: uint64(i)}, TS: at(), Data: []byte("a")})
	}
	p.Feed(Chunk{Key: real, Out: true, TS: at(), Data: []byte(ok5)})
	if len(out) != 1 || out[0].URI != "/real" || out[0].Host != "real.example" || out[0].Status != 200 {
		t.Fatalf("the real request: %+v", out)
	}
	checkAccounting(t, p)
	s := p.Stats()
	t.Logf("%d slowloris connections: %d bytes held (budget %d), %d given up", n, s.Buffered, p.MaxBuffered, gaveUp)
	if s.OverBudget != uint64(gaveUp) || s.Lost != 0 || s.ParseErrors != 0 {
		t.Fatalf("%+v", s)
	}
	// The connections close (nginx's client_header_timeout): nothing is left.
	for i := 0; i < n; i++ {
		p.Close(ConnKey{TGID: 1, ID: uint64(i)}, at())
	}
	p.Close(real, at())
	if s := p.Stats(); s.Buffered != 0 || s.Conns != 0 || p.holders.Len() != 0 || len(out) != 1 {
		t.Fatalf("after the closes: %+v, %d holders, %d requests", s, p.holders.Len(), len(out))
	}
}

// Given up with a request in flight, a connection is ignored until it closes: its response
// must not be paired with a later request.
func TestBudgetGiveUpInFlight(t *testing.T) {
	var out []*model.Request
	p := NewParser(10, func(r *model.Request) { out = append(out, r) })
	p.MaxBuffered = 4096
	a, b := ConnKey{ID: 1}, ConnKey{ID: 2}
	p.Feed(Chunk{Key: a, TS: t0, Data: []byte("GET /a1 HTTP/1.1\r\nHost: a\r\n\r\n")}) // waits for its response
	checkAccounting(t, p)
	if s := p.Stats(); s.Buffered == 0 || s.Buffered > 1024 {
		t.Fatalf("a waiting request holds %d bytes", s.Buffered)
	}
	// b's partial head pushes the total over: a, the oldest holder, goes.
	p.Feed(Chunk{Key: b, TS: t0.Add(time.Millisecond), Data: []byte("GET /b HTTP/1.1\r\nX-Pad: " + strings.Repeat("b", 3950))})
	checkAccounting(t, p)
	if s := p.Stats(); s.OverBudget != 1 || s.Lost != 1 {
		t.Fatalf("%+v", s)
	}
	p.Feed(Chunk{Key: a, Out: true, TS: t0.Add(2 * time.Millisecond), Data: []byte(ok5)})
	p.Feed(Chunk{Key: a, TS: t0.Add(3 * time.Millisecond), Data: []byte("GET /a2 HTTP/1.1\r\nHost: a\r\n\r\n")})
	p.Feed(Chunk{Key: a, Out: true, TS: t0.Add(4 * time.Millisecond), Data: []byte(ok5)})
	p.Feed(Chunk{Key: b, TS: t0.Add(5 * time.Millisecond), Data: []byte("\r\n\r\n")})
	p.Feed(Chunk{Key: b, Out: true, TS: t0.Add(6 * time.Millisecond), Data: []byte(ok5)})
	p.Close(a, t0.Add(7*time.Millisecond))
	if len(out) != 1 || out[0].URI != "/b" {
		for _, r := range out {
			t.Errorf("%s %s %d", r.Method, r.URI, r.Status)
		}
		t.Fatalf("want only /b reported (a's exchanges were in flight when it was given up)")
	}
	checkAccounting(t, p)
}

// Buffers hold what arrived, not their bound; a head arriving whole, and a connection between
// exchanges, hold nothing.
func TestBuffersGrowAsNeeded(t *testing.T) {
	h := newHarness(t)
	h.in("GET /x HTTP/1.1\r\n")
	if s := h.p.Stats(); s.Buffered == 0 || s.Buffered > 256 {
		t.Fatalf("17 bytes of head hold %d", s.Buffered)
	}
	h.in("Host: a\r\n\r\n")
	h.out1(ok5)
	h.in("GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	h.in("POST /z HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r")
	h.in("\nabcd\r\n0\r\n\r\n")
	h.out1(ok5)
	h.want("GET a /x HTTP/1.1 200 43", "GET a /y HTTP/1.1 200 43", "POST a /z HTTP/1.1 200 43")
	checkAccounting(t, h.p)
	if s := h.p.Stats(); s.Buffered != 0 || h.p.holders.Len() != 0 {
		t.Fatalf("between exchanges: %+v", s)
	}
}

// Expire gives up heads incomplete for HeadTimeout and forgets connections idle for
// IdleTimeout; neither loses a request, and a forgotten connection's next request counts.
func TestExpire(t *testing.T) {
	h := newHarness(t)
	h.in("GET /done HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	slow := ConnKey{TGID: 42, ID: 8}
	h.p.Feed(Chunk{Key: slow, TS: h.at(), Data: []byte("GET /slow HTTP/1.1\r\nX-A: ")})
	h2 := ConnKey{TGID: 42, ID: 9}
	h.p.Feed(Chunk{Key: h2, TS: h.at(), Data: h2Preface})
	start := t0.Add(time.Duration(h.ms) * time.Millisecond)

	h.p.Expire(start.Add(time.Minute)) // nothing is old enough
	if s := h.p.Stats(); s.HeadTimeouts != 0 || s.Reclaimed != 0 || s.Conns != 3 {
		t.Fatalf("%+v", s)
	}
	h.p.Expire(start.Add(DefaultHeadTimeout + time.Second))
	if s := h.p.Stats(); s.HeadTimeouts != 1 || s.Buffered != 0 || s.Reclaimed != 0 {
		t.Fatalf("%+v", s)
	}
	// The trickle goes on: not a start line, ignored; a new request on it counts.
	h.p.Feed(Chunk{Key: slow, TS: start.Add(DefaultHeadTimeout + 2*time.Second), Data: []byte("b\r\n")})
	h.p.Feed(Chunk{Key: slow, TS: start.Add(DefaultHeadTimeout + 3*time.Second), Data: []byte("GET /next HTTP/1.1\r\nHost: a\r\n\r\n")})
	h.p.Feed(Chunk{Key: slow, Out: true, TS: start.Add(DefaultHeadTimeout + 4*time.Second), Data: []byte(ok5)})

	// Idle: the first connection goes, the HTTP/2 one stays (its next bytes would be
	// mistaken for a new connection's), the one active since does not.
	h.p.Expire(start.Add(DefaultIdleTimeout + time.Second))
	if s := h.p.Stats(); s.Reclaimed != 1 || s.Conns != 2 || h.p.conns[h.k] != nil {
		t.Fatalf("%+v", s)
	}
	h.ms = int(DefaultIdleTimeout/time.Millisecond) + 10_000
	h.in("GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	h.want("GET a /done HTTP/1.1 200 43", "GET a /next HTTP/1.1 200 43", "GET a /again HTTP/1.1 200 43")
	if s := h.p.Stats(); s.Lost != 0 || s.NonHTTP != 0 || s.H2Conns != 1 {
		t.Fatalf("%+v", s)
	}
	checkAccounting(t, h.p)
}

// Give-ups and bad records are logged at most once per interval, with the count held back.
func TestLogLimiter(t *testing.T) {
	l := logLimiter{every: 10 * time.Second}
	var got []string
	for s := 0; s <= 25; s++ {
		if ok, held := l.allow(t0.Add(time.Duration(s) * time.Second)); ok {
			got = append(got, fmt.Sprintf("%ds:%d", s, held))
		}
	}
	if g := strings.Join(got, " "); g != "0s:0 10s:9 20s:9" {
		t.Fatalf("logged at %s", g)
	}
}
