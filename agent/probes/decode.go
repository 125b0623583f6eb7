package probes

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/nginxlayout"
	"github.com/kong-watcher/kong-watcher/bpf"
	"golang.org/x/sys/unix"
)

// Event kinds and the flags decoding reads: bpf/nginxreq.c's enums, as bpf2go generates them.
const (
	evRequest = uint32(bpf.NginxReqNginxreqKindEV_REQUEST)
	evCalib   = uint32(bpf.NginxReqNginxreqKindEV_CALIB)

	fHostTrunc = uint32(bpf.NginxReqNginxreqFlagF_HOST_TRUNC)
	fNoClock   = uint32(bpf.NginxReqNginxreqFlagF_NO_CLOCK)
	fHasLua    = uint32(bpf.NginxReqNginxreqFlagF_HAS_LUA)
	// fHostServerName: the client sent no Host, so host is the server's server_name ($host).
	fHostServerName = uint32(bpf.NginxReqNginxreqFlagF_HOST_SERVER_NAME)
	// fListenErr: the accepting listener's address could not be read.
	fListenErr = uint32(bpf.NginxReqNginxreqFlagF_LISTEN_ERR)
	// fMethodBit: the method was not read; it is the name of MethodBit's method.
	fMethodBit = uint32(bpf.NginxReqNginxreqFlagF_METHOD_BIT)
	// fHostInURI: the Host's bytes are in the strings (Uri, running on into Host) from HostOff
	// on: right after the URI's, or read with them (fHostFolded).
	fHostInURI  = uint32(bpf.NginxReqNginxreqFlagF_HOST_IN_URI)
	fHostFolded = uint32(bpf.NginxReqNginxreqFlagF_HOST_FOLDED)
)

// Address families of the listener's sockaddr.
const (
	afUnix  = unix.AF_UNIX
	afInet  = unix.AF_INET
	afInet6 = unix.AF_INET6
)

type (
	rawEvent = bpf.NginxReqNginxreqEvent
	rawCalib = bpf.NginxReqNginxreqCalib
)

const (
	eventSize = int(unsafe.Sizeof(rawEvent{}))
	calibSize = int(unsafe.Sizeof(rawCalib{}))
	// eventHead is the shortest request record: everything before the URI's bytes.
	eventHead = int(unsafe.Offsetof(rawEvent{}.Uri))
	// strsLen is the strings' buffer: Uri and Host, one after the other (TestEventSizes).
	strsLen = len(rawEvent{}.Uri) + len(rawEvent{}.Host)
)

// strs is ev's strings' buffer: the URI's bytes, then the Host's at HostOff.
func strs(ev *rawEvent) []int8 { return unsafe.Slice(&ev.Uri[0], strsLen) }

// eventLen is the length of a request record whose fields are ev's (event_len in
// nginxreq.c): up to the end of the URI's copy or of the Host's after it, or the whole event
// when it carries the client address.
func eventLen(ev *rawEvent) int {
	if ev.AddrLen > 0 {
		return eventSize
	}
	n := min(int(ev.UriLen), len(ev.Uri))
	if ev.Flags&fHostInURI != 0 {
		n = max(n, int(min(ev.HostOff, uint32(strsLen)))+min(int(ev.HostLen), len(ev.Host)))
	}
	return eventHead + min(n, strsLen)
}

// hostBuf is the buffer that holds ev's Host bytes: the strings' from HostOff on (parseRecord
// refuses a record whose Host would not fit there), or Host for a calibration event's.
func hostBuf(ev *rawEvent) []int8 {
	if ev.Flags&fHostInURI != 0 {
		// Clamped again: parked events recovered from the kernel's map skip parseRecord.
		all := strs(ev)
		off := min(int(ev.HostOff), len(all))
		return all[off:min(off+len(ev.Host), len(all))]
	}
	return ev.Host[:]
}

// luaPhaseOf maps the BPF program's phase index (its attach cookie) to the model's.
var luaPhaseOf = [bpf.NginxReqNginxreqLuaPhaseLUA_NPHASES]model.LuaPhase{
	bpf.NginxReqNginxreqLuaPhaseLUA_REWRITE:       model.LuaRewrite,
	bpf.NginxReqNginxreqLuaPhaseLUA_ACCESS:        model.LuaAccess,
	bpf.NginxReqNginxreqLuaPhaseLUA_CONTENT:       model.LuaContent,
	bpf.NginxReqNginxreqLuaPhaseLUA_HEADER_FILTER: model.LuaHeaderFilter,
	bpf.NginxReqNginxreqLuaPhaseLUA_BODY_FILTER:   model.LuaBodyFilter,
	bpf.NginxReqNginxreqLuaPhaseLUA_LOG:           model.LuaLog,
	bpf.NginxReqNginxreqLuaPhaseLUA_BALANCER:      model.LuaBalancer,
}

// The program and the model know the same number of phases (a compile error otherwise).
var _ = [1]struct{}{}[int(model.NumLuaPhases)-int(bpf.NginxReqNginxreqLuaPhaseLUA_NPHASES)]

var errShortRecord = errors.New("short record")

// record is one ring buffer record, copied out of the ring (which is reused after reading).
type record struct {
	kind  uint32
	ev    rawEvent
	calib *rawCalib // only for calibration events
}

// parseRecord copies a raw ring buffer record into a typed one, a calibration record into
// calib (nil: refused). It never trusts the record's contents beyond its length: strings are
// clamped when converted.
func parseRecord(raw []byte, into *record, calib *rawCalib) error {
	if len(raw) < 4 {
		return errShortRecord
	}
	into.kind = binary.LittleEndian.Uint32(raw)
	switch into.kind {
	case evRequest:
		// The record ends where the decoder stops reading: after the URI's bytes, or after
		// the client address when the per-request log is on (see event_len in nginxreq.c).
		if len(raw) < eventHead {
			return fmt.Errorf("request event: %w (%d < %d)", errShortRecord, len(raw), eventHead)
		}
		n := copy(unsafe.Slice((*byte)(unsafe.Pointer(&into.ev)), eventSize), raw)
		clear(unsafe.Slice((*byte)(unsafe.Pointer(&into.ev)), eventSize)[n:])
		if need := eventLen(&into.ev); n < need {
			return fmt.Errorf("request event: %w (%d bytes, its strings need %d)", errShortRecord, n, need)
		}
		if ev := &into.ev; ev.Flags&fHostInURI != 0 &&
			uint64(ev.HostOff)+uint64(min(ev.HostLen, uint32(len(ev.Host)))) > uint64(strsLen) {
			return fmt.Errorf("request event: its Host (%d bytes at %d) does not fit in its strings' buffer", ev.HostLen, ev.HostOff)
		}
		into.calib = nil
	case evCalib:
		if calib == nil {
			return errors.New("calibration event: no buffer for it")
		}
		if len(raw) < calibSize {
			return fmt.Errorf("calibration event: %w (%d < %d)", errShortRecord, len(raw), calibSize)
		}
		copy(unsafe.Slice((*byte)(unsafe.Pointer(calib)), calibSize), raw)
		if calib.Ev.Flags&fHostInURI != 0 {
			// Its Host is decoded from the candidates (decodeCalib), never from the URI's buffer.
			return errors.New("calibration event: flagged as carrying its Host in the URI's buffer")
		}
		into.ev = calib.Ev
		into.calib = calib
	default:
		return fmt.Errorf("unknown event kind %d", into.kind)
	}
	return nil
}

// str converts a C buffer holding the first bytes of a string of length n.
func str(b []int8, n uint32) string { return string(cbytes(b, n)) }

// cbytes is the bytes of a C buffer holding the first bytes of a string of length n.
func cbytes(b []int8, n uint32) []byte {
	if int(n) < len(b) {
		b = b[:n]
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(b))), len(b))
}

func proto(v uint64) string {
	switch v {
	case 9:
		return "HTTP/0.9"
	case 1000:
		return "HTTP/1.0"
	case 1001:
		return "HTTP/1.1"
	case 2000:
		return "HTTP/2.0"
	case 3000:
		return "HTTP/3.0"
	}
	return ""
}

// clock turns events into requests: it converts the kernel's boot-time clock to wall time,
// hosts (nil: none) keeps the Host strings it made, so that the few hosts a gateway serves
// are not allocated again for every request, and uris (nil: none) is where the URIs' strings
// are copied. Used by one goroutine at a time.
type clock struct {
	bootToWall time.Duration
	hosts      *hostCache
	uris       *stringSlab
}

// hostCache holds up to maxHosts Host strings; when full it starts again (a flood of
// distinct hosts costs what it did without it). last is the one it returned last: requests
// in a row mostly share their Host, and a comparison is cheaper than a lookup.
type hostCache struct {
	m    map[string]string
	last string
}

const maxHosts = 256

func newHostCache() *hostCache { return &hostCache{m: make(map[string]string, maxHosts)} }

// str is str(b, n) from the cache.
func (h *hostCache) str(b []int8, n uint32) string {
	if h == nil {
		return str(b, n)
	}
	key := cbytes(b, n)
	if string(key) == h.last {
		return h.last
	}
	s, ok := h.m[string(key)]
	if !ok {
		if len(h.m) >= maxHosts {
			clear(h.m)
		}
		s = string(key)
		h.m[s] = s
	}
	h.last = s
	return s
}

// stringSlab copies strings into shared chunks: one allocation per slabChunk bytes of URIs
// instead of one per request. A chunk's bytes are never written again once a string covers
// them, and a chunk lives as long as any of its strings does.
type stringSlab struct{ buf []byte }

const slabChunk = 32 << 10

// str is str(b, n), copied into the slab.
func (s *stringSlab) str(b []int8, n uint32) string {
	v := cbytes(b, n)
	if s == nil || len(v) == 0 || len(v) > slabChunk/8 {
		return string(v)
	}
	if len(v) > cap(s.buf)-len(s.buf) {
		s.buf = make([]byte, 0, slabChunk)
	}
	off := len(s.buf)
	s.buf = append(s.buf, v...)
	return unsafe.String(&s.buf[off], len(v))
}

// toRequest fills out from a request event. status is headers_out.status (for calibration
// events it comes from the snapshot).
func (c clock) toRequest(ev *rawEvent, status uint64, out *model.Request) {
	*out = model.Request{}
	out.Start = time.Unix(int64(ev.StartSec), int64(ev.StartMsec)*int64(time.Millisecond))
	if ev.Flags&fNoClock == 0 {
		// nginx's own cached clock: the same value $request_time is computed from.
		out.End = time.Unix(int64(ev.NowSec), int64(ev.NowMsec)*int64(time.Millisecond))
		out.Latency = out.End.Sub(out.Start)
	} else {
		out.End = time.Unix(0, int64(ev.KtimeNs)).Add(c.bootToWall)
		out.Latency = out.End.Sub(out.Start).Truncate(time.Millisecond)
	}
	if out.Latency < 0 {
		out.Latency = 0
	}
	if ev.Flags&fMethodBit != 0 {
		out.Method = nginxlayout.MethodForBit(ev.MethodBit)
	} else {
		out.Method = str(ev.Method[:], ev.MethodLen)
	}
	out.Host = c.hosts.str(hostBuf(ev), ev.HostLen)
	out.URI = c.uris.str(ev.Uri[:], ev.UriLen)
	// The record carries the real lengths: longer than the buffer means the value was cut
	// (the buffers are model.MaxHostLen and model.MaxURILen bytes, see TestEventSizes).
	out.HostTruncated = int(ev.HostLen) > len(ev.Host)
	out.URITruncated = int(ev.UriLen) > len(ev.Uri)
	if ev.MethodLen > 0 {
		// No request line parsed (a 400 on it): nginx logs no protocol either.
		out.Proto = proto(ev.HttpVersion)
	}
	out.Status = finalStatus(status, int64(ev.Rc), ev.Sent)
	out.HasUpstream = ev.UpstreamTries > 0
	if out.HasUpstream {
		out.Upstream = time.Duration(ev.UpstreamMs) * time.Millisecond
	}
	out.BytesSent = ev.Sent
	out.ClientAddr = str(ev.Addr[:], ev.AddrLen)
	if ev.Flags&fHasLua != 0 {
		out.HasLua = true
		for i, ns := range ev.LuaNs {
			out.LuaPhases[luaPhaseOf[i]] = time.Duration(ns)
		}
	}
	out.PID = int(ev.Tgid)
	if ev.Flags&fListenErr == 0 {
		switch ev.Family {
		case afInet, afInet6:
			out.ListenerKnown = true
			out.LocalPort = ev.LocalPort>>8 | ev.LocalPort<<8 // network order
		case afUnix:
			out.ListenerKnown, out.UnixListener = true, true
		}
	}
}

// finalStatus applies what ngx_http_free_request does right after our probe: a positive rc
// (e.g. 499 for a client abort, 400/408 while reading the request) replaces the status when
// none was set or nothing was sent.
func finalStatus(status uint64, rc int64, sent uint64) int {
	if rc > 0 && (status == 0 || sent == 0) {
		status = uint64(rc)
	}
	if status > 999 {
		return 0
	}
	return int(status)
}

// calibSample turns a calibration event into a learning sample.
func calibSample(cb *rawCalib, nowSec int64) nginxlayout.Sample {
	n := int(cb.SnapLen)
	if n > len(cb.Snap) {
		n = len(cb.Snap)
	}
	s := nginxlayout.Sample{
		Snap:     cb.Snap[:n],
		Addr:     cb.Ev.R,
		NowSec:   nowSec,
		BPFStart: int(cb.S_off),
	}
	if cb.Ev.Flags&fNoClock == 0 && cb.Ev.NowSec != 0 {
		s.NowSec = int64(cb.Ev.NowSec)
	}
	for i := range s.Upstream {
		u := cb.Up[i]
		s.Upstream[i] = nginxlayout.UpstreamArray{Ptr: u.Ptr, Nelts: u.Nelts, Size: u.Size, Pool: u.Pool}
	}
	if cb.Ev.MethodLen > 0 {
		s.MethodName = str(cb.Ev.Method[:], cb.Ev.MethodLen)
	}
	if cb.SrvConf != 0 && cb.Cscf != 0 {
		s.Srv = nginxlayout.SrvConf{SrvConf: cb.SrvConf, Cscf: cb.Cscf, CtxSrvConf: cb.CscfCtxSrv, Head: cb.CscfHead}
		for i := range s.Srv.Names {
			s.Srv.Names[i] = str(cb.Sn[i][:], cb.SnLen[i])
		}
	}
	return s
}

// serverNameCandidate is the index of the BPF program's server_name capture at offset off
// (nginxlayout.ServerNameCandidates), or -1.
func serverNameCandidate(off int) int {
	for i, c := range nginxlayout.ServerNameCandidates {
		if off != 0 && c == off {
			return i
		}
	}
	return -1
}

var errCalibDecode = errors.New("calibration event does not fit the learnt layout")

// decodeCalib decodes a calibration event with a learnt layout: the scalar fields come from
// the snapshot, the strings from the captures the BPF program made at candidate positions.
// serverName is the learnt offset of server_name in the core srv conf (0: unknown), used as
// nginx's $host does when the client sent no Host.
func (c clock) decodeCalib(cb *rawCalib, l nginxlayout.Layout, serverName int, out *model.Request) error {
	if int(cb.S_off) != l.Start || int(cb.SnapLen) < l.Status()+8 || int(cb.SnapLen) > len(cb.Snap) {
		return errCalibDecode
	}
	hi, ui := l.HostCandidate(), l.UpstreamCandidate()
	if hi < 0 || ui < 0 {
		return errCalibDecode
	}
	ev := cb.Ev
	ev.HostLen = cb.HostLen[hi]
	copy(ev.Host[:], cb.Host[hi][:])
	if si := serverNameCandidate(serverName); ev.HostLen == 0 && si >= 0 && cb.Cscf != 0 {
		ev.HostLen = cb.SnLen[si]
		copy(ev.Host[:], cb.Sn[si][:])
		ev.Flags |= fHostServerName
		if ev.HostLen > uint32(len(ev.Host)) {
			ev.Flags |= fHostTrunc
		}
	}
	up := cb.Up[ui]
	if up.Ptr != 0 && up.Nelts > 0 {
		ev.UpstreamTries = uint32(up.Nelts)
		ev.UpstreamMs = up.SumMs
	}
	status := binary.LittleEndian.Uint64(cb.Snap[l.Status():])
	c.toRequest(&ev, status, out)
	if !plausible(&ev, status, out) {
		return errCalibDecode
	}
	return nil
}

// plausible is the sanity check applied to every decoded request: a wrong layout shows up
// as garbage here long before it shows up in the statistics.
func plausible(ev *rawEvent, status uint64, r *model.Request) bool {
	if ev.MethodLen == 0 || ev.MethodLen > 32 || !nginxlayout.ValidToken(r.Method) {
		return ev.HttpVersion == 9 || ev.MethodBit == 1 // HTTP/0.9 or a bad request line
	}
	if want := nginxlayout.MethodForBit(ev.MethodBit); want != "" && want != r.Method {
		return false
	}
	// Unread, the name is the bit's: its length at method_name is what checks the layout.
	if ev.Flags&fMethodBit != 0 && int(ev.MethodLen) != len(r.Method) {
		return false
	}
	if status > 999 || r.Proto == "" {
		return false
	}
	if bytes.IndexByte([]byte(r.Host), 0) >= 0 {
		return false
	}
	return r.Latency >= 0 && r.Latency < 48*time.Hour
}

// ignorable reports a free_request call that was not a client request: nginx also frees
// requests it made for itself (TLS certificate/servername evaluation, failed HTTP/2 stream
// setup) that have no request line, no status and sent nothing; it does not log them.
// A client that sent a bad or partial request line gets a status (400) from rc.
func ignorable(ev *rawEvent, r *model.Request) bool {
	return ev.MethodLen == 0 && ev.UriLen == 0 && r.Status == 0 && ev.Sent == 0
}
