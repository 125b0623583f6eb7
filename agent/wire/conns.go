package wire

import (
	"bytes"
	"container/list"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

// ConnKey identifies a connection of a gateway process: a socket fd, or for TLS the SSL*
// (SSL_read/SSL_write see no fd; the encrypted socket I/O underneath is not captured).
type ConnKey struct {
	TGID uint32
	TLS  bool
	ID   uint64
}

// Chunk is one captured piece of a connection's byte stream.
type Chunk struct {
	Key ConnKey
	// Out is true for bytes the gateway wrote, false for bytes it read.
	Out bool
	// TS is when the read/write call returned.
	TS time.Time
	// Len is how many bytes of the stream the chunk stands for; Data is the captured
	// prefix (len(Data) <= Len).
	Len  int64
	Data []byte
}

// ParserStats counts what the parser saw and what it could not use.
type ParserStats struct {
	Conns       int    // connections tracked now
	Evicted     uint64 // connections dropped to stay under MaxConns
	ParseErrors uint64 // resyncs after garbage, lost framing, malformed heads
	H2Conns     uint64 // HTTP/2 connections seen and not parsed (HPACK is out of scope)
	Upstream    uint64 // connections where the gateway is the client (proxy_pass): skipped
	Requests    uint64 // model.Requests produced
	Unanswered  uint64 // requests that ended with the connection and no response
	Unmatched   uint64 // responses with no request seen (agent started mid-connection)
	Overflow    uint64 // pipelined requests dropped past maxPending
	NonHTTP     uint64 // connections whose first bytes are not HTTP (DNS, databases, streams)
	Rejected    uint64 // responses to heads never completed (400/414/494): reported, partly known

	// Buffered is what the connections hold now beyond their fixed state: heads and chunk
	// lines read in pieces, requests waiting for their responses, upstream exchanges in flight
	// (bytes, at most Parser.MaxBuffered).
	Buffered     int64
	OverBudget   uint64 // connections given up to keep Buffered under MaxBuffered
	HeadTimeouts uint64 // connections given up with a head still incomplete after HeadTimeout
	Reclaimed    uint64 // idle connections forgotten after IdleTimeout (nothing lost)
	Lost         uint64 // requests read and never reported: their connection was given up or evicted
}

// Listener is the listening socket a connection came from (model.Request's LocalPort,
// UnixListener and ListenerKnown).
type Listener struct {
	Port  uint16
	Unix  bool
	Known bool
}

const maxPending = 64

type role int

const (
	roleUnknown  role = iota
	roleServer        // the gateway accepted it: requests are read, responses written
	roleUpstream      // the gateway connected: ignored
	roleH2
	roleOpaque // upgraded (WebSocket) or tunnelled
	roleOther  // not HTTP from the start: a worker's DNS, database or stream-module sockets
	roleGivenUp
)

// pendingReq is a request whose exchange is not over. An exchange ends when the response
// is written AND the request body is read: nginx may answer before it has read (and
// discarded) a body, and logs the request, with $request_time, only after the body is in.
type pendingReq struct {
	method, uri, host, proto string
	uriCut, hostCut          bool // cut at model.MaxURILen, model.MaxHostLen
	start                    time.Time

	bodyDone bool
	bodyEnd  time.Time

	respDone bool
	status   int
	bytes    int64
	respEnd  time.Time

	// endsAtClose: the last exchange of a connection (Connection: close, HTTP/1.0). nginx
	// logs it when the connection is closed, after any lingering close, so it ends there.
	endsAtClose bool

	// up is the upstream exchange whose response this request's response relays.
	up *upstreamX
}

// upstreamX is one request the gateway sent to an upstream and its response.
type upstreamX struct {
	method         string
	start          time.Time // the request head written
	head           time.Time // the response head read
	end            time.Time // the response's last byte read
	headSeen, done bool
}

// upstreamTime is what nginx's $upstream_response_time measures, from the request written
// (nginx counts from the connect, which the wire does not see) to the response read.
func (u *upstreamX) upstreamTime() time.Duration {
	end := u.end
	if !u.done {
		end = u.head
	}
	if d := end.Sub(u.start); d > 0 {
		return d
	}
	return 0
}

type conn struct {
	key       ConnKey
	role      role
	req, resp half
	p         *Parser
	pending   []pendingReq

	upq []*upstreamX // upstream role: requests written, oldest first

	// the response being read
	interim   bool
	respClose bool
	status    int
	respBytes int64
	matched   bool
	lru       *list.Element

	// listener is the listening socket the connection came from; told: the parser was told
	// it (Accept) or has resolved it (Parser.Resolve).
	listener Listener
	told     bool

	last      time.Time     // the last chunk's
	mem       int64         // memory() when last settled
	hold      *list.Element // in Parser.holders while mem > 0
	holdSince time.Time
}

// Parser turns captured chunks of many connections into model.Requests. It holds at most
// MaxConns connections (least recently used evicted first), each with a fixed-size state,
// and MaxBuffered bytes for all of them together beyond that. Not safe for concurrent use.
type Parser struct {
	// MaxBuffered bounds ParserStats.Buffered (default DefaultMaxBuffered). Past it, the
	// connections that have held bytes the longest are given up: a slowloris client's head
	// ages, a real one is complete within milliseconds.
	MaxBuffered int64
	// HeadTimeout gives up a connection whose head is still incomplete after it (default
	// DefaultHeadTimeout), IdleTimeout forgets one idle that long between messages (default
	// DefaultIdleTimeout): Expire applies them.
	HeadTimeout, IdleTimeout time.Duration
	// OnH2 is called once per connection found to speak HTTP/2.
	OnH2 func(k ConnKey)
	// OnError is called for every parse error (for debug logs).
	OnError func(k ConnKey, reason string)
	// OnGiveUp is called for every connection given up, with the requests lost with it.
	OnGiveUp func(k ConnKey, reason string, lost int)
	// Resolve, when set, finds the listener of a connection the parser was not told the
	// listener of (one that predates the agent), once per connection, at its first request.
	Resolve func(k ConnKey) Listener

	maxConns int
	conns    map[ConnKey]*conn
	lru      *list.List
	emit     func(*model.Request)
	stats    ParserStats
	used     int64      // sum of the connections' mem
	holders  *list.List // connections with mem > 0, in the order they started to hold it
	// upHead is, per worker, the upstream response head read last and not yet claimed: nginx
	// relays it to its client in the same event handler, so the next response head the
	// worker writes to a client is that request's.
	upHead map[uint32]*upstreamX
}

// NewParser returns a Parser that calls emit for every request paired with its response.
func NewParser(maxConns int, emit func(*model.Request)) *Parser {
	if maxConns <= 0 {
		maxConns = 16384
	}
	return &Parser{maxConns: maxConns, conns: map[ConnKey]*conn{}, lru: list.New(), emit: emit, upHead: map[uint32]*upstreamX{},
		MaxBuffered: DefaultMaxBuffered, HeadTimeout: DefaultHeadTimeout, IdleTimeout: DefaultIdleTimeout, holders: list.New()}
}

// Stats returns the counters.
func (p *Parser) Stats() ParserStats {
	s := p.stats
	s.Conns = len(p.conns)
	s.Buffered = p.used
	return s
}

func (p *Parser) get(k ConnKey) *conn {
	if c, ok := p.conns[k]; ok {
		p.lru.MoveToFront(c.lru)
		return c
	}
	c := &conn{key: k, p: p}
	c.req = half{isReq: true, ev: reqEvents{c}}
	c.resp = half{isReq: false, ev: respEvents{c}}
	c.lru = p.lru.PushFront(c)
	p.conns[k] = c
	for len(p.conns) > p.maxConns {
		old := p.lru.Back().Value.(*conn)
		p.stats.Lost += uint64(len(old.pending))
		p.drop(old)
		p.stats.Evicted++
	}
	return c
}

// drop forgets a connection and what it holds.
func (p *Parser) drop(c *conn) {
	p.used -= c.mem
	c.mem = 0
	if c.hold != nil {
		p.holders.Remove(c.hold)
		c.hold = nil
	}
	p.lru.Remove(c.lru)
	delete(p.conns, c.key)
}

// Feed processes one chunk.
func (p *Parser) Feed(ch Chunk) {
	if ch.Len < int64(len(ch.Data)) {
		ch.Len = int64(len(ch.Data))
	}
	if ch.Len == 0 {
		return
	}
	c := p.get(ch.Key)
	c.last = ch.TS
	p.feed(c, ch)
	p.settle(c)
	p.enforce()
}

func (p *Parser) feed(c *conn, ch Chunk) {
	if c.role == roleUnknown {
		c.classify(ch)
	}
	gap := ch.Len - int64(len(ch.Data))
	if c.role == roleUpstream {
		// The gateway is the client: its writes are requests, its reads responses.
		if ch.Out {
			c.req.now = ch.TS
			c.req.feed(ch.Data, gap)
		} else {
			c.resp.now = ch.TS
			c.resp.feed(ch.Data, gap)
		}
		return
	}
	if c.role != roleServer {
		return
	}
	if ch.Out {
		c.resp.now = ch.TS
		c.resp.feed(ch.Data, gap)
	} else {
		if c.req.state == stHead && len(c.req.buf) == 0 && isH2Preface(ch.Data) && len(c.pending) == 0 {
			c.becomeH2()
			return
		}
		c.req.now = ch.TS
		c.req.feed(ch.Data, gap)
	}
}

func (c *conn) becomeH2() {
	c.role = roleH2
	c.p.stats.H2Conns++
	if c.p.OnH2 != nil {
		c.p.OnH2(c.key)
	}
}

// classify decides from a connection's first captured bytes whether the gateway is the
// server (it reads a request) or the client of an upstream (it writes one).
func (c *conn) classify(ch Chunk) {
	d := ch.Data
	switch {
	case len(d) == 0:
		return // nothing captured: wait for bytes
	case !ch.Out && isH2Preface(d):
		c.becomeH2()
	case !ch.Out && (looksLikeStart(d, true) || bytes.HasPrefix(d, proxyV2Sig[:min(len(d), len(proxyV2Sig))]) && len(d) >= 4):
		c.role = roleServer
	case !ch.Out && looksLikeStart(d, false):
		c.role = roleUpstream // reading an upstream's response
		c.p.stats.Upstream++
	case ch.Out && looksLikeStart(d, true):
		c.role = roleUpstream // writing a request to an upstream
		c.p.stats.Upstream++
	case ch.Out && looksLikeStart(d, false):
		// A response on a connection whose request we missed: from now on it is a server
		// connection; this response is skipped as unmatched.
		c.role = roleServer
	case ch.Out:
		// An HTTP/2 server speaks first (its SETTINGS frame, before the client preface is
		// read): wait for what the client sends.
	default:
		// Workers also talk DNS (the resolver's UDP recv), database and stream protocols:
		// not an error, just not ours.
		c.role = roleOther
		c.p.stats.NonHTTP++
	}
}

// Close ends a connection: a response delimited by the close is complete, requests still
// waiting get Status 0 (the client or the gateway gave up).
func (p *Parser) Close(k ConnKey, ts time.Time) {
	c, ok := p.conns[k]
	if !ok {
		return
	}
	if c.role == roleUpstream && c.resp.state == stUntilClose {
		if u := c.currentUpstream(); u != nil && u.headSeen {
			u.end, u.done = ts, true
		}
	}
	if c.role == roleServer {
		if c.resp.state == stUntilClose {
			c.resp.now = ts
			c.finishResponse()
		}
		for _, r := range c.pending {
			if r.respDone { // answered (maybe the rest of the body never came)
				end := r.respEnd
				if r.endsAtClose || r.bodyEnd.After(end) {
					end = ts
				}
				p.produce(c, r, r.status, r.bytes, end)
				continue
			}
			p.stats.Unanswered++
			p.produce(c, r, 0, 0, ts)
		}
	}
	p.drop(c)
}

func (p *Parser) produce(c *conn, r pendingReq, status int, bytes int64, end time.Time) {
	p.stats.Requests++
	if p.emit == nil {
		return
	}
	lat := end.Sub(r.start)
	if lat < 0 {
		lat = 0
	}
	if !c.told && p.Resolve != nil {
		c.listener, c.told = p.Resolve(c.key), true
	}
	p.emit(&model.Request{
		Start: r.start, End: end, Method: r.method, Host: r.host, URI: r.uri, Proto: r.proto,
		HostTruncated: r.hostCut, URITruncated: r.uriCut,
		Status: status, Latency: lat, BytesSent: uint64(bytes), PID: int(c.key.TGID),
		HasUpstream: r.up != nil, Upstream: upTime(r.up),
		LocalPort: c.listener.Port, UnixListener: c.listener.Unix, ListenerKnown: c.listener.Known,
	})
}

// Accept starts connection k, which the gateway accepted from listener l at ts: a socket
// from its listening socket, or a TLS session on a socket (whose listener it shares). A
// connection the parser still holds under k (its close was lost) ends first.
func (p *Parser) Accept(k ConnKey, l Listener, ts time.Time) {
	if _, ok := p.conns[k]; ok {
		p.Close(k, ts)
	}
	c := p.get(k)
	c.listener, c.told = l, true
}

// ListenerOf returns connection k's listener and whether the parser was told it.
func (p *Parser) ListenerOf(k ConnKey) (Listener, bool) {
	if c, ok := p.conns[k]; ok && c.told {
		return c.listener, true
	}
	return Listener{}, false
}
