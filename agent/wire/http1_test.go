package wire

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

var t0 = time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)

// harness feeds a scripted conversation on one connection.
type harness struct {
	t   *testing.T
	p   *Parser
	out []*model.Request
	k   ConnKey
	ms  int
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, k: ConnKey{TGID: 42, ID: 7}}
	h.p = NewParser(100, func(r *model.Request) { h.out = append(h.out, r) })
	return h
}

func (h *harness) at() time.Time { h.ms++; return t0.Add(time.Duration(h.ms) * time.Millisecond) }

// in/out feed captured bytes; the optional gap adds uncaptured bytes after them.
func (h *harness) in(s string, gap ...int64)   { h.feed(false, s, gap...) }
func (h *harness) out1(s string, gap ...int64) { h.feed(true, s, gap...) }
func (h *harness) feed(out bool, s string, gap ...int64) {
	n := int64(len(s))
	for _, g := range gap {
		n += g
	}
	h.p.Feed(Chunk{Key: h.k, Out: out, TS: h.at(), Len: n, Data: []byte(s)})
}

func (h *harness) want(lines ...string) {
	h.t.Helper()
	var got []string
	for _, r := range h.out {
		got = append(got, fmt.Sprintf("%s %s %s %s %d %d", r.Method, r.Host, r.URI, r.Proto, r.Status, r.BytesSent))
	}
	if strings.Join(got, "\n") != strings.Join(lines, "\n") {
		h.t.Fatalf("got\n%s\nwant\n%s\nstats %+v", strings.Join(got, "\n"), strings.Join(lines, "\n"), h.p.Stats())
	}
}

const ok5 = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

func TestKeepAlive(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 3; i++ {
		h.in(fmt.Sprintf("GET /a/%d?q=1 HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n", i))
		h.out1(ok5)
	}
	n := int64(len(ok5))
	h.want(
		fmt.Sprintf("GET example.com /a/0?q=1 HTTP/1.1 200 %d", n),
		fmt.Sprintf("GET example.com /a/1?q=1 HTTP/1.1 200 %d", n),
		fmt.Sprintf("GET example.com /a/2?q=1 HTTP/1.1 200 %d", n))
	r := h.out[0]
	if r.Latency != time.Millisecond || !r.End.Equal(r.Start.Add(r.Latency)) || r.PID != 0 && r.PID != 42 {
		t.Fatalf("timing %+v", r)
	}
}

func TestPipelining(t *testing.T) {
	h := newHarness(t)
	h.in("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: a\r\n\r\nPOST /3 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
	// HEAD's response has a Content-Length but no body; all four in one write.
	h.out1(ok5 + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n" + "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
	h.want("GET a /1 HTTP/1.1 200 43", "HEAD a /2 HTTP/1.1 200 38", "POST a /3 HTTP/1.1 201 43", "GET a /4 HTTP/1.1 404 67")
}

func TestChunkedRequestAcrossCalls(t *testing.T) {
	h := newHarness(t)
	h.in("POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab")
	h.in("cd\r\n10;ext=1\r\n0123456789abcdef\r")
	h.in("\n0\r\nX-Trailer: 1\r\n\r\n")
	h.out1(ok5)
	h.in("GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	h.want("POST a /up HTTP/1.1 200 43", "GET a /next HTTP/1.1 200 43")
}

func TestBodiesSkippedByLengthNotCapture(t *testing.T) {
	h := newHarness(t)
	// A 1 MB upload of which only the first bytes are captured per call.
	h.in("PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\nxxxx", 500000-4)
	h.in("yyyy", 499996)
	h.out1("HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\nzz", 199998)
	h.in("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1("HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
	h.out1("body", 100000-4)
	h.want("PUT a /big HTTP/1.1 200 200043", "GET a /after HTTP/1.1 200 100043")
}

func TestNoBodyStatusesAndHead(t *testing.T) {
	h := newHarness(t)
	h.in("GET /nc HTTP/1.1\r\nHost: a\r\nIf-None-Match: x\r\n\r\n")
	h.out1("HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
	h.in("DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1("HTTP/1.1 204 No Content\r\n\r\n")
	h.in("HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
	h.in("GET /z HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	h.want("GET a /nc HTTP/1.1 304 49", "DELETE a /x HTTP/1.1 204 27", "HEAD a /h HTTP/1.1 200 47", "GET a /z HTTP/1.1 200 43")
}

func TestContinue(t *testing.T) {
	h := newHarness(t)
	h.in("POST /c HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
	h.out1("HTTP/1.1 100 Continue\r\n\r\n")
	h.in("data")
	h.out1("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
	h.want("POST a /c HTTP/1.1 201 68")
}

func TestLargeHeadersSplit(t *testing.T) {
	h := newHarness(t)
	big := "GET /big HTTP/1.1\r\nHost: big.example\r\nCookie: " + strings.Repeat("c", 6000) + "\r\n\r\n"
	for i := 0; i < len(big); i += 1000 {
		h.in(big[i:min(i+1000, len(big))])
	}
	resp := "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-A: b\r\n", 300) + "Content-Length: 2\r\n\r\nok"
	h.out1(resp[:1024])
	h.out1(resp[1024:2048])
	h.out1(resp[2048:])
	h.want(fmt.Sprintf("GET big.example /big HTTP/1.1 200 %d", len(resp)))
	// The request start is the first piece's time, not the last.
	if r := h.out[0]; r.Latency != time.Duration(len(big)/1000+3)*time.Millisecond {
		t.Fatalf("latency %v", r.Latency)
	}
}

func TestUntilCloseAndUnanswered(t *testing.T) {
	h := newHarness(t)
	h.in("GET /old HTTP/1.0\r\nHost: a\r\n\r\n")
	h.out1("HTTP/1.0 200 OK\r\n\r\nstream", 10)
	h.p.Close(h.k, h.at())
	h.want("GET a /old HTTP/1.0 200 35")
	h.in("GET /abandoned HTTP/1.1\r\nHost: a\r\n\r\n")
	h.p.Close(h.k, h.at())
	h.want("GET a /old HTTP/1.0 200 35", "GET a /abandoned HTTP/1.1 0 0")
	if s := h.p.Stats(); s.Unanswered != 1 || s.Conns != 0 {
		t.Fatalf("%+v", s)
	}
}

func TestGarbageResync(t *testing.T) {
	h := newHarness(t)
	h.in("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	h.in("\x16\x03\x01\x02\x00garbage")
	h.in("GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	h.want("GET a /1 HTTP/1.1 200 43", "GET a /2 HTTP/1.1 200 43")
	if s := h.p.Stats(); s.ParseErrors == 0 {
		t.Fatalf("garbage not counted: %+v", s)
	}
	// A gap inside a head loses framing; the next captured request start resyncs.
	h.in("GET /3 HTTP/1.1\r\nHost: a\r\n", 5000)
	h.in("GET /4 HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	h.want("GET a /1 HTTP/1.1 200 43", "GET a /2 HTTP/1.1 200 43", "GET a /4 HTTP/1.1 200 43")
}

func TestH2AndUpstreamAndUpgrade(t *testing.T) {
	p := NewParser(10, func(r *model.Request) { t.Fatalf("unexpected %+v", r) })
	var h2 int
	p.OnH2 = func(ConnKey) { h2++ }
	k := ConnKey{TGID: 1, TLS: true, ID: 0xdead}
	p.Feed(Chunk{Key: k, TS: t0, Len: 24, Data: h2Preface})
	p.Feed(Chunk{Key: k, TS: t0, Len: 9, Data: []byte("\x00\x00\x00\x04\x00\x00\x00\x00\x00")})
	// upstream: the gateway writes a request and reads a response
	u := ConnKey{TGID: 1, ID: 12}
	p.Feed(Chunk{Key: u, Out: true, TS: t0, Len: 30, Data: []byte("GET / HTTP/1.1\r\nHost: up\r\n\r\n")})
	p.Feed(Chunk{Key: u, TS: t0, Len: 43, Data: []byte(ok5)})
	if s := p.Stats(); s.H2Conns != 1 || h2 != 1 || s.Upstream != 1 || s.Requests != 0 {
		t.Fatalf("%+v", s)
	}
	h := newHarness(t)
	h.in("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	h.out1("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
	h.in("\x81\x85garbage frames")
	h.out1("\x81\x05HTTP/")
	h.want("GET a /ws HTTP/1.1 101 56")
	if s := h.p.Stats(); s.ParseErrors != 0 {
		t.Fatalf("%+v", s)
	}
}

func TestLRUBound(t *testing.T) {
	p := NewParser(3, nil)
	for i := 0; i < 10; i++ {
		p.Feed(Chunk{Key: ConnKey{ID: uint64(i)}, Len: 6, Data: []byte("GET / ")})
	}
	if s := p.Stats(); s.Conns != 3 || s.Evicted != 7 {
		t.Fatalf("%+v", s)
	}
}

func TestHeadBound(t *testing.T) {
	h := newHarness(t)
	h.in("GET / HTTP/1.1\r\n")
	for i := 0; i < 100; i++ {
		h.in("X-Long: " + strings.Repeat("a", 1000) + "\r\n")
	}
	if s := h.p.Stats(); s.ParseErrors == 0 || len(h.p.conns[h.k].req.buf) > maxHead {
		t.Fatalf("head not bounded: %+v", s)
	}
}

// FuzzParser feeds arbitrary bytes, split at arbitrary points, in both directions, with
// gaps. It must never panic, and must keep its memory bounds: a budget small enough that
// long heads and deep pipelines exceed it, accounted exactly.
func FuzzParser(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), []byte(ok5), uint8(7), uint16(0))
	f.Add([]byte("POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), []byte("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n"), uint8(3), uint16(2))
	f.Add([]byte("HEAD / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n\r\n"), []byte("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 204 No\r\n\r\n"), uint8(1), uint16(100))
	f.Add(h2Preface, []byte("\x00\x00"), uint8(2), uint16(0))
	f.Add([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nGET / HTTP/1.1\r\n\r\n"), []byte(ok5), uint8(9), uint16(0))
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c0123456789abGET / HTTP/1.1\r\n\r\n"), []byte(ok5), uint8(13), uint16(0))
	f.Add([]byte("\x16\x03\x01garbage\r\n\r\n"), []byte("HTTP/1.1 999 x\r\nContent-Length: -1\r\n\r\n"), uint8(5), uint16(1))
	f.Fuzz(func(t *testing.T, in, out []byte, split uint8, gap uint16) {
		p := NewParser(4, func(r *model.Request) {
			if r.Latency < 0 || r.Status < 0 || r.Status > 999 {
				t.Fatalf("bad request %+v", r)
			}
		})
		p.MaxBuffered = 8 << 10
		step := int(split%16) + 1
		k := ConnKey{ID: 1}
		ts := t0
		for i, j := 0, 0; i < len(in) || j < len(out); i, j = i+step, j+step {
			ts = ts.Add(time.Millisecond)
			if i < len(in) {
				d := in[i:min(i+step, len(in))]
				p.Feed(Chunk{Key: k, TS: ts, Len: int64(len(d)) + int64(gap%3)*int64(gap), Data: d})
			}
			if j < len(out) {
				d := out[j:min(j+step, len(out))]
				p.Feed(Chunk{Key: k, Out: true, TS: ts, Len: int64(len(d)), Data: d})
			}
			if c := p.conns[k]; c != nil && (len(c.req.buf) > maxHead || len(c.resp.buf) > maxHead || len(c.pending) > maxPending) {
				t.Fatalf("bounds exceeded")
			}
			checkAccounting(t, p)
		}
		p.Close(k, ts)
		if s := p.Stats(); s.Conns != 0 || s.Buffered != 0 {
			t.Fatalf("conn survived close: %+v", s)
		}
	})
}

// nginx may answer before it has read a request body (return, errors): it logs the request,
// and measures $request_time, once the body is read and discarded. So does the parser.
func TestResponseBeforeBodyEnd(t *testing.T) {
	h := newHarness(t)
	h.in("POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabcd") // t+1ms
	h.out1(ok5)                                                               // t+2ms
	if len(h.out) != 0 {
		t.Fatal("produced before the body was read")
	}
	h.in("efghij") // t+3ms
	h.want("POST a /early HTTP/1.1 200 43")
	if h.out[0].Latency != 2*time.Millisecond {
		t.Fatalf("latency %v, want until the body's end", h.out[0].Latency)
	}
	// Closed with the body unread: produced with the response's end.
	h.in("POST /cut HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
	h.out1(ok5)
	h.p.Close(h.k, h.at())
	h.want("POST a /early HTTP/1.1 200 43", "POST a /cut HTTP/1.1 200 43")
}

// The last exchange of a connection ends when the connection closes: nginx logs it then,
// after a lingering close that can take a while.
func TestConnectionCloseEndsAtClose(t *testing.T) {
	h := newHarness(t)
	h.in("GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n") // +1ms
	h.out1("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	if len(h.out) != 0 {
		t.Fatal("produced before the close")
	}
	h.ms += 10
	h.p.Close(h.k, h.at()) // +13ms
	h.want("GET a /last HTTP/1.1 404 64")
	if h.out[0].Latency != 12*time.Millisecond {
		t.Fatalf("latency %v", h.out[0].Latency)
	}
}

// nginx's HTTP/2 sends its SETTINGS before it reads the client's preface.
func TestH2ServerSpeaksFirst(t *testing.T) {
	p := NewParser(10, nil)
	k := ConnKey{TGID: 1, TLS: true, ID: 99}
	p.Feed(Chunk{Key: k, Out: true, TS: t0, Len: 27, Data: []byte("\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x80\x00\x04\x00\x01\x00\x00\x00\x05\x00\xff\xff\xff")})
	p.Feed(Chunk{Key: k, TS: t0, Len: 24, Data: h2Preface})
	if s := p.Stats(); s.H2Conns != 1 || s.ParseErrors != 0 {
		t.Fatalf("%+v", s)
	}
}

// Behind a load balancer with proxy_protocol, a PROXY header precedes the first request.
func TestProxyProtocol(t *testing.T) {
	h := newHarness(t)
	h.in("PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\nGET /v1 HTTP/1.1\r\nHost: a\r\n\r\n")
	h.out1(ok5)
	h.want("GET a /v1 HTTP/1.1 200 43")

	h2 := newHarness(t)
	hdr := append([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"), 192, 0, 2, 1, 192, 0, 2, 2, 0xdc, 0x04, 0x01, 0xbb)
	h2.in(string(hdr[:20])) // the header split over two reads
	h2.in(string(hdr[20:]) + "GET /v2 HTTP/1.1\r\nHost: b\r\n\r\n")
	h2.out1(ok5)
	h2.want("GET b /v2 HTTP/1.1 200 43")
	if s := h2.p.Stats(); s.ParseErrors != 0 {
		t.Fatalf("%+v", s)
	}
}

// A worker's resolver reads DNS answers with recv: a non-HTTP socket, not a parse error.
func TestNonHTTPSocket(t *testing.T) {
	h := newHarness(t)
	h.in("\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x07example\x03com\x00")
	h.in("GET / HTTP/1.1\r\n\r\n") // ignored: the socket is not HTTP
	if s := h.p.Stats(); s.ParseErrors != 0 || s.NonHTTP != 1 || s.Requests != 0 {
		t.Fatalf("%+v", s)
	}
}

// nginx answers a head it rejects (too large, malformed) before the head is complete.
func TestRejectedHead(t *testing.T) {
	h := newHarness(t)
	h.in("GET /" + strings.Repeat("a", 9000)) // the request line never ends
	h.out1("HTTP/1.1 414 Request-URI Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	h.p.Close(h.k, h.at())
	if len(h.out) != 1 || h.out[0].Status != 414 || h.out[0].Method != "" || h.out[0].URI != "" {
		t.Fatalf("%+v", h.out)
	}
	h = newHarness(t)
	h.in("GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n") // malformed: desync
	h.out1("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	h.p.Close(h.k, h.at())
	if len(h.out) != 1 || h.out[0].Status != 400 || h.out[0].URI != "/x" || h.out[0].Host != "a" || h.out[0].Method != "GET" {
		t.Fatalf("%+v", h.out)
	}
}

// A proxied request: the worker reads the client's request, writes one upstream, reads the
// upstream's response, writes the client's response.
func TestUpstreamTiming(t *testing.T) {
	var out []*model.Request
	p := NewParser(10, func(r *model.Request) { out = append(out, r) })
	client, up := ConnKey{TGID: 5, ID: 3}, ConnKey{TGID: 5, ID: 9}
	other := ConnKey{TGID: 5, ID: 4}
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	p.Feed(Chunk{Key: client, TS: at(1), Data: []byte("GET /p HTTP/1.1\r\nHost: a\r\n\r\n")})
	p.Feed(Chunk{Key: up, Out: true, TS: at(2), Data: []byte("GET /p HTTP/1.0\r\nHost: backend\r\n\r\n")})
	p.Feed(Chunk{Key: up, TS: at(4), Data: []byte("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")})
	p.Feed(Chunk{Key: up, TS: at(7), Data: []byte("world")})
	p.Feed(Chunk{Key: client, Out: true, TS: at(8), Data: []byte(ok5)})
	// A request served without an upstream on the same worker gets none.
	p.Feed(Chunk{Key: other, TS: at(9), Data: []byte("GET /local HTTP/1.1\r\nHost: a\r\n\r\n")})
	p.Feed(Chunk{Key: other, Out: true, TS: at(10), Data: []byte(ok5)})
	if len(out) != 2 {
		t.Fatalf("%d requests", len(out))
	}
	if r := out[0]; !r.HasUpstream || r.Upstream != 5*time.Millisecond || r.Latency != 7*time.Millisecond {
		t.Fatalf("proxied: %+v", r)
	}
	if r := out[1]; r.HasUpstream {
		t.Fatalf("local: %+v", r)
	}
	if s := p.Stats(); s.Upstream != 1 || s.ParseErrors != 0 {
		t.Fatalf("%+v", s)
	}
}

// Host and URI are cut where the request-object data path's buffers end, with the flags set,
// so a long value reads the same whichever path saw it.
func TestTruncation(t *testing.T) {
	longURI := "/" + strings.Repeat("u", model.MaxURILen) + "?q=" + strings.Repeat("v", 500)
	longHost := strings.Repeat("H", model.MaxHostLen+1) + ".EXAMPLE"
	exactURI := "/" + strings.Repeat("e", model.MaxURILen-1)
	exactHost := strings.Repeat("h", model.MaxHostLen)
	for _, c := range []struct {
		name, uri, host   string
		wantURI, wantHost string
		uriCut, hostCut   bool
	}{
		{"short", "/a?b=c", "Example.com:8080", "/a?b=c", "example.com", false, false},
		{"exact", exactURI, exactHost + ":443", exactURI, exactHost, false, false},
		{"long", longURI, longHost + ":8443", longURI[:model.MaxURILen], strings.ToLower(longHost)[:model.MaxHostLen], true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			head := "GET " + c.uri + " HTTP/1.1\r\nHost: " + c.host + "\r\n\r\n"
			for i := 0; i < len(head); i += 100 { // split like the kernel side's events may be
				h.in(head[i:min(i+100, len(head))])
			}
			h.out1(ok5)
			// nginx rejects this one (400) after its request line: reported from what was read.
			h.in("GET " + c.uri + " HTTP/1.1\r\nHost: " + c.host + "\r\nBad Header\r\n\r\n")
			h.out1("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			h.p.Close(h.k, h.at())
			if len(h.out) != 2 {
				t.Fatalf("%d requests, stats %+v", len(h.out), h.p.Stats())
			}
			for _, r := range h.out {
				if r.URI != c.wantURI || r.URITruncated != c.uriCut || r.Host != c.wantHost || r.HostTruncated != c.hostCut {
					t.Errorf("status %d: URI %q (cut %v), Host %q (cut %v); want %q (%v), %q (%v)",
						r.Status, r.URI, r.URITruncated, r.Host, r.HostTruncated, c.wantURI, c.uriCut, c.wantHost, c.hostCut)
				}
			}
		})
	}
}
