package wire

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

// rawHdr is a struct wire_event_hdr to encode.
type rawHdr struct {
	ts, conn                       uint64
	tgid, len                      uint32
	cap                            uint16
	fn, kind, dir, tls, pad0, pad1 uint8
}

// encode lays the header out like the kernel side, then room bytes of which data is the start.
func (h rawHdr) encode(data []byte, room int) []byte {
	b := make([]byte, hdrSize+max(room, len(data)))
	le := binary.LittleEndian
	le.PutUint64(b[0:], h.ts)
	le.PutUint64(b[8:], h.conn)
	le.PutUint32(b[16:], h.tgid)
	le.PutUint32(b[20:], h.len)
	le.PutUint16(b[24:], h.cap)
	b[26], b[27], b[28], b[29], b[30], b[31] = h.fn, h.kind, h.dir, h.tls, h.pad0, h.pad1
	copy(b[hdrSize:], data)
	return b
}

// dataRecord is a record as the kernel side writes it for n bytes of which data was captured:
// in the smallest of its three record sizes that holds data.
func dataRecord(fn uint8, conn uint64, data []byte, n uint32) []byte {
	h := rawHdr{ts: 1_000_000, conn: conn, tgid: 42, len: n, cap: uint16(len(data)), fn: fn}
	if fn == fnSSLRead || fn == fnSSLWrite {
		h.tls = 1
	}
	if fn != fnRecv && fn != fnSSLRead {
		h.dir = dirOut
	}
	room := 0
	switch {
	case len(data) > 256:
		room = wireCap
	case len(data) > 0:
		room = 256
	}
	return h.encode(data, room)
}

// tellRecord is an accept (fn accept or accept4: conn accepted from listening socket fd) or
// an SSL_set_fd (conn is the SSL*, fd its socket) record.
func tellRecord(fn uint8, conn uint64, fd uint32) []byte {
	h := rawHdr{ts: 3_000_000, conn: conn, tgid: 42, len: fd, fn: fn, kind: kindAccept}
	if fn == fnSSLSetFD {
		h.kind, h.tls = kindSSLFD, 1
	}
	return h.encode(nil, 0)
}

func closeRecord(fn uint8, conn uint64) []byte {
	h := rawHdr{ts: 2_000_000, conn: conn, tgid: 42, fn: fn, kind: kindClose, dir: dirOut}
	if fn == fnSSLFree {
		h.tls = 1
	}
	return h.encode(nil, 0)
}

func TestDecodeEvent(t *testing.T) {
	req := []byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
	ev, err := decodeEvent(dataRecord(fnRecv, 7, req, uint32(len(req))), 5)
	if err != nil {
		t.Fatal(err)
	}
	want := Chunk{Key: ConnKey{TGID: 42, ID: 7}, TS: time.Unix(0, 1_000_005), Len: int64(len(req)), Data: req}
	if ev.close || ev.chunk.Key != want.Key || !ev.chunk.TS.Equal(want.TS) || ev.chunk.Out || ev.chunk.Len != want.Len || !bytes.Equal(ev.chunk.Data, req) {
		t.Fatalf("got %+v, want %+v", ev, want)
	}
	big := bytes.Repeat([]byte("b"), wireCap)
	for _, c := range []struct {
		name  string
		raw   []byte
		close bool
		n     int64
		capd  int
		out   bool
		tls   bool
	}{
		{"writev, a large record", dataRecord(fnWritev, 9, big, 5000), false, 5000, wireCap, true, false},
		{"sendfile, nothing captured", dataRecord(fnSendfile, 9, nil, 300000), false, 300000, 0, true, false},
		{"SSL_read", dataRecord(fnSSLRead, 0xdead, req, uint32(len(req))), false, int64(len(req)), len(req), false, true},
		{"close", closeRecord(fnClose, 9), true, 0, 0, false, false},
		{"SSL_free", closeRecord(fnSSLFree, 0xdead), true, 0, 0, false, true},
	} {
		ev, err := decodeEvent(c.raw, 0)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if ev.close != c.close || ev.chunk.Len != c.n || len(ev.chunk.Data) != c.capd || ev.chunk.Out != c.out || ev.chunk.Key.TLS != c.tls {
			t.Errorf("%s: %+v", c.name, ev)
		}
	}
	for _, c := range []struct {
		raw    []byte
		key    ConnKey
		accept bool
	}{
		{tellRecord(fnAccept4, 12, 6), ConnKey{TGID: 42, ID: 12}, true},
		{tellRecord(fnAccept, 13, 7), ConnKey{TGID: 42, ID: 13}, true},
		{tellRecord(fnSSLSetFD, 0xbeef, 12), ConnKey{TGID: 42, TLS: true, ID: 0xbeef}, false},
	} {
		ev, err := decodeEvent(c.raw, 0)
		if err != nil || ev.chunk.Key != c.key || ev.accepted != c.accept || ev.sslFD == c.accept || ev.close || ev.fd != binary.LittleEndian.Uint32(c.raw[20:]) {
			t.Errorf("%x: %+v, %v", c.raw[:hdrSize], ev, err)
		}
	}
}

// Records the kernel side cannot have written are errors, never events.
func TestDecodeEventRejects(t *testing.T) {
	req := []byte("GET / HTTP/1.1\r\n\r\n")
	good := dataRecord(fnRecv, 7, req, uint32(len(req)))
	mod := func(f func(h *rawHdr)) []byte {
		h := rawHdr{ts: 1, conn: 7, tgid: 42, len: uint32(len(req)), cap: uint16(len(req)), fn: fnRecv}
		f(&h)
		return h.encode(req, 256)
	}
	for _, c := range []struct {
		name, want string
		raw        []byte
	}{
		{"empty", "shorter than", nil},
		{"one byte", "shorter than", []byte{1}},
		{"a header less a byte", "shorter than", good[:hdrSize-1]},
		{"oversized", "longer than", append(dataRecord(fnRecv, 7, bytes.Repeat([]byte("x"), wireCap), uint32(wireCap)), 0)},
		{"captured more than the record holds", "the record holds", good[:hdrSize+len(req)-1]},
		{"captured more than transferred", "captured of", mod(func(h *rawHdr) { h.len = 3 })},
		{"captured more than WIRE_CAP", "captured of", mod(func(h *rawHdr) { h.cap, h.len = uint16(wireCap+1), 5000 })},
		{"no bytes", "no bytes", mod(func(h *rawHdr) { h.len, h.cap = 0, 0 })},
		{"function 0", "unknown function", mod(func(h *rawHdr) { h.fn = 0 })},
		{"function 12", "unknown function", mod(func(h *rawHdr) { h.fn = 12 })},
		{"kind 4", "unknown record kind", mod(func(h *rawHdr) { h.kind = 4 })},
		{"accept of recv", "record of kind", mod(func(h *rawHdr) { h.kind, h.len, h.cap = kindAccept, 5, 0 })},
		{"accept with bytes", "record of kind", mod(func(h *rawHdr) { h.kind, h.fn = kindAccept, fnAccept4 })},
		{"SSL fd of accept", "record of kind", mod(func(h *rawHdr) { h.kind, h.fn, h.len, h.cap = kindSSLFD, fnAccept4, 5, 0 })},
		{"data of accept", "data record of function", mod(func(h *rawHdr) { h.fn = fnAccept })},
		{"recv written", "direction", mod(func(h *rawHdr) { h.dir = dirOut })},
		{"direction 7", "direction", mod(func(h *rawHdr) { h.fn, h.dir = fnSend, 7 })},
		{"plain recv marked tls", "tls flag", mod(func(h *rawHdr) { h.tls = 1 })},
		{"SSL_read not marked tls", "tls flag", mod(func(h *rawHdr) { h.fn = fnSSLRead })},
		{"padding", "padding", mod(func(h *rawHdr) { h.pad1 = 1 })},
		{"tgid 0", "tgid 0", mod(func(h *rawHdr) { h.tgid = 0 })},
		{"close of recv", "close record", mod(func(h *rawHdr) { h.kind, h.len, h.cap = kindClose, 0, 0 })},
		{"close with bytes", "close record", mod(func(h *rawHdr) { h.kind, h.fn, h.dir = kindClose, fnClose, dirOut })},
		{"data of close", "data record of function", mod(func(h *rawHdr) { h.fn, h.dir = fnClose, dirOut })},
		{"all ones", "padding", bytes.Repeat([]byte{0xff}, hdrSize+8)},
	} {
		ev, err := decodeEvent(c.raw, 0)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %+v, error %v; want an error with %q", c.name, ev, err, c.want)
		}
	}
}

// FuzzDecodeEvent: whatever the ring holds, decoding never panics, rejects what the kernel side
// cannot have written (anything shorter than a header, in particular), and what it accepts is
// a well-formed event that re-encodes to the same bytes and that the parser takes.
func FuzzDecodeEvent(f *testing.F) {
	req := []byte("GET /f HTTP/1.1\r\nHost: fuzz\r\n\r\n")
	f.Add(dataRecord(fnRecv, 7, req, uint32(len(req))))
	f.Add(dataRecord(fnWritev, 7, []byte(ok5), uint32(len(ok5))))
	f.Add(dataRecord(fnSend, 7, bytes.Repeat([]byte("s"), wireCap), 70000))
	f.Add(dataRecord(fnSendfile, 7, nil, 300000))
	f.Add(dataRecord(fnSSLWrite, 0xfeed, []byte(ok5), uint32(len(ok5))))
	f.Add(closeRecord(fnClose, 7))
	f.Add(closeRecord(fnSSLFree, 0xfeed))
	f.Add(tellRecord(fnAccept4, 7, 6))
	f.Add(tellRecord(fnSSLSetFD, 0xfeed, 7))
	f.Add([]byte{})
	f.Add([]byte("short"))
	f.Add(bytes.Repeat([]byte{0xff}, hdrSize+wireCap))
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := decodeEvent(raw, 0)
		if err != nil {
			return
		}
		if len(raw) < hdrSize {
			t.Fatalf("a %d-byte record decoded", len(raw))
		}
		ch := ev.chunk
		header := ev.close || ev.accepted || ev.sslFD
		if len(ch.Data) > wireCap || (!header && (ch.Len < 1 || int64(len(ch.Data)) > ch.Len)) || (header && (ch.Len != 0 || ch.Data != nil)) {
			t.Fatalf("malformed event %+v", ev)
		}
		// Re-encoded, the event is the record's header and captured bytes (nothing invented).
		h := rawHdr{ts: uint64(ch.TS.UnixNano()), conn: ch.Key.ID, tgid: ch.Key.TGID, len: uint32(ch.Len), cap: uint16(len(ch.Data)), fn: raw[26], kind: kindData}
		switch {
		case ev.close:
			h.kind = kindClose
		case ev.accepted:
			h.kind, h.len = kindAccept, ev.fd
		case ev.sslFD:
			h.kind, h.len = kindSSLFD, ev.fd
		}
		if ch.Out || ev.close {
			h.dir = dirOut
		}
		if ch.Key.TLS {
			h.tls = 1
		}
		if enc := h.encode(ch.Data, 0); !bytes.Equal(enc, raw[:len(enc)]) {
			t.Fatalf("re-encoded\n%x\nrecord\n%x", enc, raw[:len(enc)])
		}
		p := NewParser(4, func(*model.Request) {})
		switch {
		case ev.close:
			p.Close(ch.Key, ch.TS)
		case ev.accepted:
			p.Accept(ch.Key, Listener{Port: uint16(ev.fd), Known: true}, ch.TS)
		case ev.sslFD:
			l, _ := p.ListenerOf(ConnKey{TGID: ch.Key.TGID, ID: uint64(ev.fd)})
			p.Accept(ch.Key, l, ch.TS)
		default:
			p.Feed(ch)
		}
	})
}
