package wire

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/kong-watcher/kong-watcher/bpf"
)

// Ring-buffer records: a struct wire_event_hdr (bpf/headers/wire_types.h) followed by up to
// wireCap captured bytes. The kernel side reserves one of three record sizes and says in cap
// how many of the bytes after the header are the stream's.
const (
	hdrSize = int(unsafe.Sizeof(bpf.WireWireEventHdr{}))
	wireCap = len(bpf.WireWireEvent{}.Data) // WIRE_CAP
)

// event is one decoded record: a chunk of a connection's stream, or its close, or the fd it
// relates to (then only chunk.Key and chunk.TS are set): accepted, chunk.Key's socket was
// accepted from the listening socket fd; sslFD, chunk.Key's TLS session is on socket fd.
type event struct {
	close, accepted, sslFD bool
	fd                     uint32
	chunk                  Chunk
}

// decodeEvent decodes a record the kernel side wrote, adding monoToRT to its CLOCK_MONOTONIC
// stamp. The chunk's Data aliases raw. A record the kernel side cannot have written (short,
// oversized, fields out of range or contradicting each other) is an error: feeding it to the
// parser would corrupt a connection's framing.
func decodeEvent(raw []byte, monoToRT int64) (event, error) {
	if len(raw) < hdrSize {
		return event{}, fmt.Errorf("record of %d bytes, shorter than the %d-byte header", len(raw), hdrSize)
	}
	if len(raw) > hdrSize+wireCap {
		return event{}, fmt.Errorf("record of %d bytes, longer than the largest event (%d)", len(raw), hdrSize+wireCap)
	}
	var h bpf.WireWireEventHdr
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), hdrSize), raw)
	ts, conn, tgid, n, capd := h.Ts, h.Conn, h.Tgid, h.Len, int(h.Cap)
	fn, kind, dir, tls := h.Fn, h.Kind, h.Dir, h.Tls
	if h.Pad != [2]uint8{} {
		return event{}, fmt.Errorf("header padding %#x %#x, not zero", h.Pad[0], h.Pad[1])
	}
	if fn < fnRecv || fn > fnSSLSetFD {
		return event{}, fmt.Errorf("unknown function %d", fn)
	}
	isTLS := fn == fnSSLRead || fn == fnSSLWrite || fn == fnSSLFree || fn == fnSSLSetFD
	if tls > 1 || (tls == 1) != isTLS {
		return event{}, fmt.Errorf("tls flag %d for function %d", tls, fn)
	}
	wantDir := uint8(dirOut)
	if fn == fnRecv || fn == fnSSLRead || fn == fnAccept || fn == fnAccept4 || fn == fnSSLSetFD {
		wantDir = dirIn
	}
	if dir != wantDir {
		return event{}, fmt.Errorf("direction %d for function %d", dir, fn)
	}
	if tgid == 0 {
		return event{}, fmt.Errorf("no process (tgid 0)")
	}
	key := ConnKey{TGID: tgid, TLS: isTLS, ID: conn}
	when := time.Unix(0, int64(ts)+monoToRT)
	closing := fn == fnClose || fn == fnSSLFree
	tells := fn == fnAccept || fn == fnAccept4 || fn == fnSSLSetFD
	switch kind {
	case kindClose:
		if !closing || n != 0 || capd != 0 {
			return event{}, fmt.Errorf("close record of function %d with %d bytes (%d captured)", fn, n, capd)
		}
		return event{close: true, chunk: Chunk{Key: key, TS: when}}, nil
	case kindAccept, kindSSLFD:
		if (kind == kindAccept) != (fn == fnAccept || fn == fnAccept4) || kind == kindSSLFD && fn != fnSSLSetFD || capd != 0 || n > 1<<31 {
			return event{}, fmt.Errorf("record of kind %d of function %d, fd %d (%d captured)", kind, fn, n, capd)
		}
		return event{accepted: kind == kindAccept, sslFD: kind == kindSSLFD, fd: n, chunk: Chunk{Key: key, TS: when}}, nil
	case kindData:
		switch {
		case closing || tells:
			return event{}, fmt.Errorf("data record of function %d", fn)
		case n == 0:
			return event{}, fmt.Errorf("data record of no bytes")
		case capd > int(n) || capd > wireCap:
			return event{}, fmt.Errorf("%d bytes captured of %d (at most %d)", capd, n, wireCap)
		case hdrSize+capd > len(raw):
			return event{}, fmt.Errorf("%d bytes captured, the record holds %d", capd, len(raw)-hdrSize)
		}
		data := raw[hdrSize : hdrSize+capd : hdrSize+capd]
		return event{chunk: Chunk{Key: key, Out: dir == dirOut, TS: when, Len: int64(n), Data: data}}, nil
	}
	return event{}, fmt.Errorf("unknown record kind %d", kind)
}
