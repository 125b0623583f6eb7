package wire

import (
	"fmt"
	"time"
	"unsafe"
)

// The parser's memory bounds: what a Parser holds is at most its MaxConns connections' fixed
// state plus MaxBuffered bytes, whatever clients send (slowloris clients trickling heads that
// never end on thousands of connections, deep pipelines to a slow upstream).
const (
	// DefaultMaxBuffered is Parser.MaxBuffered's default: 8 MiB, a few times what the heads
	// and queues of normal traffic on thousands of connections hold at once.
	DefaultMaxBuffered = 8 << 20
	// DefaultHeadTimeout is beyond nginx's client_header_timeout and proxy_read_timeout
	// (60 s, also Kong's): nginx itself gives up on such a head and closes the connection
	// first; this only frees what a lost close event would leave behind.
	DefaultHeadTimeout = 5 * time.Minute
	// DefaultIdleTimeout forgets a connection idle between messages for this long; its next
	// bytes, if any, start a new state (nginx's keepalive_timeout is 75 s).
	DefaultIdleTimeout = 10 * time.Minute
)

const (
	pendingSize  = int(unsafe.Sizeof(pendingReq{}))
	upstreamSize = int(unsafe.Sizeof(upstreamX{})) + int(unsafe.Sizeof((*upstreamX)(nil)))
)

// memory is what c holds beyond its fixed state, in bytes of the buffers and queues as
// allocated: the budget's unit. Recomputed rather than tracked, so it cannot drift.
func (c *conn) memory() int64 {
	n := cap(c.req.buf) + cap(c.resp.buf)
	if f := c.req.failed; f != nil {
		n += pendingSize + f.strings()
	}
	n += cap(c.pending) * pendingSize
	for i := range c.pending {
		n += c.pending[i].strings()
	}
	n += cap(c.upq) * upstreamSize
	return int64(n)
}

func (r *pendingReq) strings() int {
	return len(r.method) + len(r.uri) + len(r.host) + len(r.proto)
}

// settle brings the accounting of c up to date after it changed.
func (p *Parser) settle(c *conn) {
	m := c.memory()
	p.used += m - c.mem
	c.mem = m
	switch {
	case m > 0 && c.hold == nil:
		c.hold = p.holders.PushBack(c)
		c.holdSince = c.last
	case m == 0 && c.hold != nil:
		p.holders.Remove(c.hold)
		c.hold = nil
	}
}

// enforce gives up the connections that have held bytes the longest until the total is
// within MaxBuffered. Each one given up holds nothing afterwards, so this ends.
func (p *Parser) enforce() {
	for p.used > p.MaxBuffered && p.holders.Len() > 0 {
		c := p.holders.Front().Value.(*conn)
		p.stats.OverBudget++
		p.giveUp(c, fmt.Sprintf("over the parser's memory budget (%d bytes held, this connection %d)", p.used, c.mem))
	}
}

// giveUp frees everything c holds. Between exchanges (nothing in flight) that is a partial
// head or chunk line: the half resynchronises at its next message, like after garbage, and
// nothing is lost. With requests (or upstream exchanges) in flight, the responses still to
// come could no longer be paired with their requests, so the connection is ignored until it
// closes (or is forgotten): its waiting requests are lost, never misreported.
func (p *Parser) giveUp(c *conn, reason string) {
	lost := len(c.pending)
	inFlight := len(c.pending) > 0 || len(c.upq) > 0
	if inFlight {
		c.role = roleGivenUp
	}
	// Nothing may stay held (enforce relies on it to end).
	c.pending, c.upq = nil, nil
	c.req.abandon(inFlight)
	c.resp.abandon(inFlight)
	p.stats.Lost += uint64(lost)
	p.settle(c)
	if p.OnGiveUp != nil {
		p.OnGiveUp(c.key, reason, lost)
	}
}

// abandon frees what the half holds; it loses framing if that was a message in progress.
func (h *half) abandon(always bool) {
	if always || len(h.buf) > 0 || h.failed != nil {
		h.state = stDesync
	}
	h.buf, h.failed, h.remain = nil, nil, 0
}

// Expire applies HeadTimeout and IdleTimeout at now (the clock of the chunks' TS). Call it
// every few seconds; it costs a walk over the connections that are past either.
func (p *Parser) Expire(now time.Time) {
	cut := now.Add(-p.HeadTimeout)
	for e := p.holders.Front(); e != nil; {
		c, next := e.Value.(*conn), e.Next()
		if !c.holdSince.Before(cut) {
			break // holders are in the order they started to hold, no later than their heads
		}
		if c.req.partialSince(cut) || c.resp.partialSince(cut) {
			p.stats.HeadTimeouts++
			p.giveUp(c, fmt.Sprintf("head incomplete for more than %v", p.HeadTimeout))
		}
		e = next
	}
	cut = now.Add(-p.IdleTimeout)
	for e := p.lru.Back(); e != nil; {
		c, prev := e.Value.(*conn), e.Prev()
		if !c.last.Before(cut) {
			break
		}
		if c.atRest() {
			p.drop(c)
			p.stats.Reclaimed++
		}
		e = prev
	}
}

// partialSince tells whether the half is reading a head begun before t.
func (h *half) partialSince(t time.Time) bool {
	return h.state == stHead && len(h.buf) > 0 && h.headStart.Before(t)
}

// atRest tells whether forgetting c loses nothing: an HTTP/1 connection (or one given up)
// between messages, holding nothing. Its next bytes classify a new state from scratch.
// Other roles stay until they close or are evicted: their next bytes would be mistaken.
func (c *conn) atRest() bool {
	switch c.role {
	case roleUnknown, roleServer, roleUpstream, roleGivenUp:
	default:
		return false
	}
	idle := func(h *half) bool { return h.state == stHead || h.state == stDesync }
	return c.mem == 0 && len(c.pending) == 0 && len(c.upq) == 0 && idle(&c.req) && idle(&c.resp)
}

// popPending removes the oldest waiting request; the queue's array goes once it is empty,
// so an idle connection holds none.
func (c *conn) popPending() pendingReq {
	r := c.pending[0]
	c.pending[0] = pendingReq{}
	c.pending = c.pending[1:]
	if len(c.pending) == 0 {
		c.pending = nil
	}
	return r
}

func (c *conn) popUpstream() {
	c.upq[0] = nil
	c.upq = c.upq[1:]
	if len(c.upq) == 0 {
		c.upq = nil
	}
}

// appendBuf appends data to b, growing it by half (at least 256 bytes) but never past limit:
// buffers are as large as what arrived in pieces, not preallocated at their bound.
func appendBuf(b, data []byte, limit int) []byte {
	if need := len(b) + len(data); need > cap(b) {
		n := min(max(need, cap(b)+cap(b)/2, 256), max(limit, need))
		nb := make([]byte, len(b), n)
		copy(nb, b)
		b = nb
	}
	return append(b, data...)
}
