// The HTTP/1 parser's callbacks on one connection: a request's head and end, the response's,
// and how each exchange becomes a model.Request (with the upstream's timing when the
// connection is the gateway's own to an upstream).

package wire

import (
	"bytes"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

type reqEvents struct{ c *conn }

func (e reqEvents) onHead(h *head, n int) (framing, int64) {
	c := e.c
	if c.role == roleUpstream {
		if len(c.upq) >= maxPending {
			c.popUpstream()
		}
		c.upq = append(c.upq, &upstreamX{method: h.method, start: c.req.headStart})
		return bodyFraming(h)
	}
	if len(c.pending) >= maxPending {
		c.popPending()
		c.p.stats.Overflow++
	}
	c.pending = append(c.pending, pendingReq{method: h.method, uri: h.uri, host: h.host, proto: h.proto,
		uriCut: h.uriCut, hostCut: h.hostCut, start: c.req.headStart, endsAtClose: h.close})
	return bodyFraming(h)
}

// bodyFraming is a request body's framing.
func bodyFraming(h *head) (framing, int64) {
	switch {
	case h.chunked:
		return byChunks, 0
	case h.contentLength > 0:
		return byLength, h.contentLength
	}
	return noBody, 0
}

func (e reqEvents) onBody(int64) {}

// onEnd: the request whose body just ended is the newest one (requests arrive in order).
func (e reqEvents) onEnd() {
	c := e.c
	if c.role == roleUpstream {
		return
	}
	if n := len(c.pending); n > 0 && !c.pending[n-1].bodyDone {
		c.pending[n-1].bodyDone, c.pending[n-1].bodyEnd = true, c.req.now
	}
	c.flush()
}

func (e reqEvents) onError(reason string) { e.c.parseError("request: " + reason) }

func (c *conn) parseError(reason string) {
	c.p.stats.ParseErrors++
	if c.p.OnError != nil {
		c.p.OnError(c.key, reason)
	}
}

type respEvents struct{ c *conn }

func (e respEvents) onHead(h *head, n int) (framing, int64) {
	c := e.c
	if c.role == roleUpstream {
		return c.upstreamHead(h)
	}
	// Interim (1xx) heads add to the bytes sent for the request, like nginx's $bytes_sent.
	c.status = h.status
	c.respBytes += int64(n)
	c.respClose = h.close && !(h.status >= 100 && h.status < 200)
	c.interim = h.status >= 100 && h.status < 200 && h.status != 101
	r := c.nextUnanswered()
	if r == nil && !c.interim {
		r = c.partialRequest()
	}
	c.matched = r != nil
	var method string
	if c.matched {
		method = r.method
		if u := c.p.upHead[c.key.TGID]; u != nil && !c.interim && !u.head.Before(r.start) {
			r.up = u
			delete(c.p.upHead, c.key.TGID)
		}
	} else {
		c.p.stats.Unmatched++
	}
	switch {
	case c.interim:
		return noBody, 0
	case h.status == 101 || method == "CONNECT" && h.status/100 == 2:
		return opaque, 0
	}
	return responseBody(h, method)
}

// responseBody is how a final, non-upgrade response's body is delimited (RFC 9112 6.3),
// given the request's method: for client and upstream connections alike.
func responseBody(h *head, method string) (framing, int64) {
	switch {
	case method == "HEAD" || h.status == 204 || h.status == 304:
		return noBody, 0
	case h.chunked:
		return byChunks, 0
	case h.contentLength >= 0:
		return byLength, h.contentLength
	}
	return untilClose, 0
}

func (e respEvents) onBody(n int64) { e.c.respBytes += n }

func (e respEvents) onEnd() {
	c := e.c
	if c.role == roleUpstream {
		if u := c.currentUpstream(); u != nil && u.headSeen && !u.done {
			u.end, u.done = c.resp.now, true
			c.popUpstream()
		}
		return
	}
	if c.interim { // 100 Continue etc.: the final response is still to come
		c.interim = false
		return
	}
	c.finishResponse()
	if c.status == 101 || c.resp.state == stOpaque {
		c.role = roleOpaque
	}
}

func (e respEvents) onError(reason string) { e.c.parseError("response: " + reason) }

// nextUnanswered is the oldest request without a response: responses come in request order.
func (c *conn) nextUnanswered() *pendingReq {
	for i := range c.pending {
		if !c.pending[i].respDone {
			return &c.pending[i]
		}
	}
	return nil
}

func (c *conn) finishResponse() {
	if r := c.nextUnanswered(); c.matched && r != nil {
		r.respDone, r.status, r.bytes, r.respEnd = true, c.status, c.respBytes, c.resp.now
		r.endsAtClose = r.endsAtClose || c.respClose
	}
	c.respClose = false
	c.matched = false
	c.status, c.respBytes = 0, 0
	c.flush()
}

// flush produces the exchanges at the head of the queue that are over.
func (c *conn) flush() {
	for len(c.pending) > 0 && c.pending[0].respDone && c.pending[0].bodyDone && !c.pending[0].endsAtClose {
		r := c.popPending()
		end := r.respEnd
		if r.bodyEnd.After(end) {
			end = r.bodyEnd
		}
		c.p.produce(c, r, r.status, r.bytes, end)
	}
}

// partialRequest turns a request nginx rejected before its head was complete (400 for a
// malformed head, 414, 431/494 for one too large) into a pending request, so the error
// counts like nginx logs it. Only a head being read, or one that lost framing, qualifies.
func (c *conn) partialRequest() *pendingReq {
	q := &c.req
	var r pendingReq
	switch {
	case q.state == stHead && len(q.buf) > 0:
		r = rejectedHead(q.buf)
	case q.state == stDesync:
		if q.failed != nil {
			r = *q.failed
		}
	default:
		return nil
	}
	r.start, r.bodyDone, r.bodyEnd = q.headStart, true, q.now
	if r.start.IsZero() {
		r.start = q.now
	}
	// nginx closes the connection after such an error: what follows is not a request.
	q.state, q.buf, q.failed = stDesync, nil, nil
	c.pending = append(c.pending, r)
	c.p.stats.Rejected++
	return &c.pending[len(c.pending)-1]
}

// rejectedHead is what nginx logs of a head it rejected, from the part read: no method/URI
// unless the request line was complete; the Host header if it came before the line nginx
// rejected. Only the first 8 KiB are looked at.
func rejectedHead(head []byte) pendingReq {
	var r pendingReq
	head = head[:min(len(head), 8192)]
	if line, rest, ok := bytes.Cut(head, []byte("\n")); ok {
		f := bytes.Fields(bytes.TrimRight(line, "\r"))
		if len(f) >= 2 && looksLikeStart(f[0], true) {
			r.method = string(f[0])
			r.uri, r.uriCut = cutString(f[1], model.MaxURILen)
			if len(f) >= 3 {
				r.proto = string(f[2])
			}
		}
		for len(rest) > 0 {
			var l []byte
			l, rest, ok = bytes.Cut(rest, []byte("\n"))
			if !ok { // the last line is incomplete
				break
			}
			name, val, found := bytes.Cut(bytes.TrimRight(l, "\r"), []byte(":"))
			if found && bytes.EqualFold(name, []byte("host")) {
				r.host, r.hostCut = model.Cut(normHost(string(bytes.TrimSpace(val))), model.MaxHostLen)
				break
			}
		}
	}
	return r
}

// currentUpstream is the oldest upstream request whose response is not complete.
func (c *conn) currentUpstream() *upstreamX {
	if len(c.upq) == 0 {
		return nil
	}
	return c.upq[0]
}

func (c *conn) upstreamHead(h *head) (framing, int64) {
	u := c.currentUpstream()
	interim := h.status >= 100 && h.status < 200 && h.status != 101
	if u != nil && !interim {
		u.head, u.headSeen = c.resp.now, true
		c.p.upHead[c.key.TGID] = u
	}
	method := ""
	if u != nil {
		method = u.method
	}
	switch {
	case interim:
		return noBody, 0
	case h.status == 101:
		c.role = roleOpaque
		return opaque, 0
	}
	return responseBody(h, method)
}

func upTime(u *upstreamX) time.Duration {
	if u == nil {
		return 0
	}
	return u.upstreamTime()
}
