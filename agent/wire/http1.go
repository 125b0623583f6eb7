package wire

import (
	"bytes"
	"strconv"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

// Limits that bound the memory one connection can hold (Parser.MaxBuffered bounds them all).
const (
	// maxHead is the largest request/response head (start line + headers) buffered; nginx's
	// default limit is 4 large_client_header_buffers of 8 KiB, Kong's similar. A buffer
	// grows to what arrived, up to this.
	maxHead = 32 << 10
	// maxLine bounds a chunk-size or trailer line.
	maxLine = 1024
)

// head is a parsed start line plus the headers the framing and the model need.
type head struct {
	// request: uri and host cut at model.MaxURILen and model.MaxHostLen like the other data
	// path's, the flags tell they were
	method, uri     string
	host            string
	uriCut, hostCut bool
	// response
	status int
	// both
	proto         string
	contentLength int64 // -1 when absent
	chunked       bool
	close         bool // Connection: close (or HTTP/1.0 without keep-alive)
}

// framing is how a message body is delimited.
type framing int

const (
	noBody framing = iota
	byLength
	byChunks
	untilClose
	opaque // the connection stops being HTTP/1 (101 Switching Protocols, CONNECT tunnel)
)

// half states.
const (
	stHead = iota
	stBody
	stChunkSize
	stChunkData
	stChunkCRLF
	stTrailer
	stUntilClose
	stOpaque // bytes are not HTTP/1 any more (after 101 / CONNECT): ignore
	stSkip   // a PROXY protocol v2 header's remaining bytes
	stDesync // lost framing: wait for a captured chunk that starts a message
)

// halfEvents is what a half reports to its connection.
type halfEvents interface {
	// onHead is called when a message head is complete; it returns the body framing (it
	// depends on the request for responses: HEAD, 1xx...). n is the head's size in bytes.
	onHead(h *head, n int) (framing, int64)
	// onBody counts body bytes of the current message.
	onBody(n int64)
	// onEnd is called when the current message is complete.
	onEnd()
	// onError reports a parse error; the half resyncs by itself.
	onError(reason string)
}

// half parses one direction of an HTTP/1 connection: a sequence of messages, each a head and
// a body framed by length, by chunks or by the connection's end. It is fed captured bytes
// plus gaps (bytes that went over the wire but were not captured: only the first bytes of a
// large read or write are copied by the kernel side), and frames bodies by counts so gaps in
// bodies cost nothing. A gap in a head or a chunk-size line loses framing: the half then
// waits for a captured chunk that begins with a valid start line.
type half struct {
	isReq  bool
	state  int
	buf    []byte // head or chunk-size/trailer line arriving in pieces; nil when none is
	remain int64  // body or chunk bytes left
	ev     halfEvents
	// sawProxy: the first message was looked at for a PROXY protocol header
	sawProxy bool
	// failed is what nginx would log of the last request head that lost framing (see
	// conn.partialRequest), nil when none.
	failed *pendingReq
	// now is the time of the chunk being fed; headStart when the current head's first byte
	// arrived (a request's Start).
	now, headStart time.Time
}

// feed processes one captured chunk: data (what was captured) then gap uncaptured bytes.
// start tells that data begins a read/write call, which is where a message may restart
// after desync.
func (p *half) feed(data []byte, gap int64) {
	if p.state == stDesync {
		if len(data) == 0 || !looksLikeStart(data, p.isReq) {
			return
		}
		p.state = stHead
		p.buf = nil
	}
	for len(data) > 0 {
		data = p.step(data)
	}
	if gap > 0 {
		p.skip(gap)
	}
}

// skip accounts for n uncaptured bytes.
func (p *half) skip(n int64) {
	for n > 0 {
		switch p.state {
		case stBody, stChunkData:
			k := min(n, p.remain)
			p.remain -= k
			n -= k
			p.ev.onBody(k)
			if p.remain == 0 {
				if p.state == stBody {
					p.state = stHead
					p.buf = nil
					p.ev.onEnd()
				} else {
					p.state = stChunkCRLF
					p.remain = 2
				}
			}
		case stChunkCRLF:
			k := min(n, p.remain)
			p.remain -= k
			n -= k
			p.ev.onBody(k)
			if p.remain == 0 {
				p.state = stChunkSize
				p.buf = nil
			}
		case stUntilClose:
			p.ev.onBody(n)
			return
		case stSkip:
			k := min(n, p.remain)
			p.remain -= k
			n -= k
			if p.remain == 0 {
				p.state = stHead
			}
		case stOpaque, stDesync:
			return
		default: // a gap in a head or a framing line
			p.desync("bytes missing inside a head or chunk line")
			return
		}
	}
}

func (p *half) desync(reason string) {
	var head []byte
	if p.state == stHead {
		head = p.buf
	}
	p.desyncHead(reason, head)
}

// desyncHead loses framing in the middle of head (nil if none).
func (p *half) desyncHead(reason string, head []byte) {
	if p.isReq && len(head) > 0 {
		// Keep what nginx logs of it: nginx answers a rejected head with an error, which
		// conn.partialRequest reports with what it knows.
		r := rejectedHead(head)
		p.failed = &r
	}
	p.state = stDesync
	p.buf = nil
	p.remain = 0
	p.ev.onError(reason)
}

// step consumes a prefix of data and returns the rest.
func (p *half) step(data []byte) []byte {
	switch p.state {
	case stHead:
		if len(p.buf) == 0 && p.isReq && !p.sawProxy {
			// A load balancer's PROXY protocol header precedes the first request.
			p.sawProxy = true
			if rest, skip, ok := proxyHeader(data); ok {
				if skip > 0 {
					p.state, p.remain = stSkip, skip
					k := min(skip, int64(len(rest)))
					p.skip(k)
					return rest[k:]
				}
				return rest
			}
		}
		if len(p.buf) == 0 {
			// Tolerate the CRLFs RFC 9112 allows before a request line (and after a body).
			for len(data) > 0 && (data[0] == '\r' || data[0] == '\n') {
				data = data[1:]
			}
			if len(data) == 0 {
				return nil
			}
			if !looksLikeStart(data, p.isReq) {
				p.desync("not an HTTP/1 start line")
				return nil
			}
			p.headStart = p.now
			p.failed = nil
			// Most heads arrive whole in one read or write: parsed in place, nothing kept.
			if end := headEnd(data, 0); end >= 0 && end <= maxHead {
				return p.endHead(data[:end], data[end:])
			}
		}
		scanFrom := max(0, len(p.buf)-3)
		if len(p.buf)+len(data) > maxHead {
			p.desync("head too large")
			return nil
		}
		p.buf = appendBuf(p.buf, data, maxHead)
		end := headEnd(p.buf, scanFrom)
		if end < 0 {
			return nil
		}
		// The buffer is let go: the rest after the head still aliases it until consumed.
		b := p.buf
		p.buf = nil
		return p.endHead(b[:end], b[end:])
	case stBody, stChunkData, stChunkCRLF, stSkip:
		k := min(int64(len(data)), p.remain)
		p.skip(k)
		return data[k:]
	case stChunkSize, stTrailer:
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if len(p.buf)+len(data) > maxLine {
				p.desync("chunk line too long")
				return nil
			}
			p.buf = appendBuf(p.buf, data, maxLine)
			p.ev.onBody(int64(len(data)))
			return nil
		}
		if len(p.buf)+i > maxLine {
			p.desync("chunk line too long")
			return nil
		}
		line := data[:i]
		if len(p.buf) > 0 {
			line = append(p.buf, line...)
			p.buf = nil
		}
		p.ev.onBody(int64(i + 1))
		line = bytes.TrimRight(line, "\r")
		if p.state == stTrailer {
			if len(line) == 0 {
				p.state = stHead
				p.ev.onEnd()
			}
			return data[i+1:]
		}
		if j := bytes.IndexByte(line, ';'); j >= 0 {
			line = line[:j]
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || size < 0 {
			p.desync("bad chunk size")
			return nil
		}
		if size == 0 {
			p.state = stTrailer
		} else {
			p.state, p.remain = stChunkData, size
		}
		return data[i+1:]
	case stUntilClose:
		p.ev.onBody(int64(len(data)))
		return nil
	default: // stOpaque, stDesync
		return nil
	}
}

// endHead handles a complete head b and returns rest, what follows it.
func (p *half) endHead(b, rest []byte) []byte {
	h, ok := parseHead(b, p.isReq)
	if !ok {
		p.desyncHead("malformed head", b)
		return nil
	}
	fr, n := p.ev.onHead(&h, len(b))
	switch fr {
	case noBody:
		p.ev.onEnd()
	case byLength:
		if n == 0 {
			p.ev.onEnd()
		} else {
			p.state, p.remain = stBody, n
		}
	case byChunks:
		p.state = stChunkSize
	case untilClose:
		p.state = stUntilClose
	case opaque:
		p.state = stOpaque
		p.ev.onEnd()
	}
	if p.state == stOpaque {
		return nil
	}
	return rest
}

// headEnd returns the index just past the blank line ending a head, or -1. Bare LF line
// ends are accepted like nginx does.
func headEnd(b []byte, from int) int {
	for i := from; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return -1
}

var methodOK = func() (t [256]bool) {
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	t['-'], t['_'] = true, true
	return
}()

// looksLikeStart tells whether b (possibly a short capture) can begin a request line
// ("METHOD SP") or a status line ("HTTP/").
func looksLikeStart(b []byte, isReq bool) bool {
	if !isReq {
		p := []byte("HTTP/")
		n := min(len(b), len(p))
		return n > 0 && bytes.Equal(b[:n], p[:n])
	}
	for i, c := range b {
		if c == ' ' {
			return i > 0
		}
		if !methodOK[c] || i >= 20 {
			return false
		}
	}
	return len(b) > 0
}

// h2Preface is what an HTTP/2 client sends first (prior knowledge or after ALPN h2).
var h2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

func isH2Preface(b []byte) bool {
	n := min(len(b), len(h2Preface))
	return n >= 3 && bytes.Equal(b[:n], h2Preface[:n])
}

// parseHead parses a complete head (start line + header lines + blank line).
func parseHead(b []byte, isReq bool) (head, bool) {
	h := head{contentLength: -1}
	lines := bytes.Split(b, []byte("\n"))
	first := bytes.TrimRight(lines[0], "\r")
	if isReq {
		sp1 := bytes.IndexByte(first, ' ')
		if sp1 <= 0 {
			return h, false
		}
		h.method = string(first[:sp1])
		rest := first[sp1+1:]
		sp2 := bytes.LastIndexByte(rest, ' ')
		if sp2 <= 0 {
			return h, false // HTTP/0.9 "GET /" is not supported: no headers, no framing
		}
		if !bytes.HasPrefix(rest[sp2+1:], []byte("HTTP/1.")) {
			return h, false
		}
		h.uri, h.uriCut = cutString(rest[:sp2], model.MaxURILen)
		h.proto = string(rest[sp2+1:])
	} else {
		if !bytes.HasPrefix(first, []byte("HTTP/1.")) || len(first) < 12 || first[8] != ' ' {
			return h, false
		}
		h.proto = string(first[:8])
		code, err := strconv.Atoi(string(first[9:12]))
		if err != nil || code < 100 || code > 999 {
			return h, false
		}
		h.status = code
	}
	keepAlive := false
	for _, ln := range lines[1:] {
		ln = bytes.TrimRight(ln, "\r")
		if len(ln) == 0 {
			break
		}
		c := bytes.IndexByte(ln, ':')
		if c <= 0 {
			return h, false
		}
		name, val := ln[:c], bytes.TrimSpace(ln[c+1:])
		switch {
		case bytes.EqualFold(name, []byte("host")):
			if h.host == "" {
				h.host, h.hostCut = model.Cut(normHost(string(val)), model.MaxHostLen)
			}
		case bytes.EqualFold(name, []byte("content-length")):
			n, err := strconv.ParseInt(string(val), 10, 64)
			if err != nil || n < 0 {
				return h, false
			}
			h.contentLength = n
		case bytes.EqualFold(name, []byte("transfer-encoding")):
			// chunked must be the last coding; anything else makes a request invalid
			// (nginx answers 501) and a response delimited by close.
			v := bytes.ToLower(val)
			if bytes.HasSuffix(bytes.TrimSpace(v), []byte("chunked")) {
				h.chunked = true
			}
		case bytes.EqualFold(name, []byte("connection")):
			v := bytes.ToLower(val)
			if bytes.Contains(v, []byte("close")) {
				h.close = true
			}
			if bytes.Contains(v, []byte("keep-alive")) {
				keepAlive = true
			}
		}
	}
	if h.proto == "HTTP/1.0" && !keepAlive {
		h.close = true
	}
	return h, true
}

// cutString is model.Cut on bytes: it copies only what is kept.
func cutString(b []byte, max int) (string, bool) {
	if len(b) > max {
		return string(b[:max]), true
	}
	return string(b), false
}

// normHost makes nginx's $host from a Host header: no port, lower case.
func normHost(h string) string {
	if len(h) > 0 && h[0] == '[' { // IPv6 literal
		if i := strings.IndexByte(h, ']'); i > 0 {
			h = h[:i+1]
		}
	} else if i := strings.IndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	b := []byte(h)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

var proxyV2Sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// proxyHeader recognises a PROXY protocol header at the start of a connection (v1: a text
// line "PROXY ...\r\n"; v2: a binary signature, 4 bytes, a 2-byte length). It returns the
// bytes after the captured part of the header and how many header bytes remain beyond data.
func proxyHeader(data []byte) (rest []byte, skip int64, ok bool) {
	if bytes.HasPrefix(data, []byte("PROXY ")) {
		i := bytes.IndexByte(data, '\n')
		if i < 0 || i > 107 { // v1 headers are at most 107 bytes
			return nil, 0, false
		}
		return data[i+1:], 0, true
	}
	if len(data) >= 16 && bytes.Equal(data[:12], proxyV2Sig) {
		n := 16 + int64(data[14])<<8 + int64(data[15])
		if n <= int64(len(data)) {
			return data[n:], 0, true
		}
		return nil, n - int64(len(data)), true
	}
	return nil, 0, false
}
