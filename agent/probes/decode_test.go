package probes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/nginxlayout"
	"github.com/kong-watcher/kong-watcher/bpf"
)

// The Go view of the C structs must not drift from bpf/nginxreq.c (bpf2go generates it, this
// pins the sizes the C side was designed with: no implicit padding).
func TestEventSizes(t *testing.T) {
	if eventSize != 464 {
		t.Fatalf("event is %d bytes, want 464", eventSize)
	}
	if calibSize != 464+8+2*40+16+3*64+3*8+96+2*4+2*64+2048 {
		t.Fatalf("calibration event is %d bytes", calibSize)
	}
	// Both data paths cut Host and URI at the same lengths: the record's buffers.
	var ev rawEvent
	if len(ev.Host) != model.MaxHostLen || len(ev.Uri) != model.MaxURILen {
		t.Fatalf("host/uri buffers %d/%d bytes, model says %d/%d", len(ev.Host), len(ev.Uri), model.MaxHostLen, model.MaxURILen)
	}
	// The strings' buffer: a Host after a long URI runs on from Uri into Host.
	if unsafe.Offsetof(ev.Host) != unsafe.Offsetof(ev.Uri)+uintptr(len(ev.Uri)) {
		t.Fatalf("Host at %d, not right after Uri (%d + %d)", unsafe.Offsetof(ev.Host), unsafe.Offsetof(ev.Uri), len(ev.Uri))
	}
}

func setStr(dst []int8, s string) uint32 {
	for i := 0; i < len(s) && i < len(dst); i++ {
		dst[i] = int8(s[i])
	}
	return uint32(len(s))
}

func sampleEvent() rawEvent {
	var ev rawEvent
	ev.Kind = evRequest
	ev.Tgid = 42
	ev.StartSec, ev.StartMsec = 1_796_000_000, 990
	ev.NowSec, ev.NowMsec = 1_796_000_001, 15
	ev.MethodBit = 2
	ev.HttpVersion = 1001
	ev.Status = 200
	ev.Sent = 150
	ev.UpstreamTries, ev.UpstreamMs = 2, 33
	ev.MethodLen = setStr(ev.Method[:], "GET")
	ev.HostLen = setStr(ev.Host[:], "api.example.com")
	ev.UriLen = setStr(ev.Uri[:], "/users/1?x=1")
	ev.AddrLen = setStr(ev.Addr[:], "10.0.0.7")
	return ev
}

func TestToRequest(t *testing.T) {
	ev := sampleEvent()
	var r model.Request
	clock{}.toRequest(&ev, ev.Status, &r)
	if r.Method != "GET" || r.Host != "api.example.com" || r.URI != "/users/1?x=1" || r.Proto != "HTTP/1.1" ||
		r.Status != 200 || r.Latency != 25*time.Millisecond || !r.HasUpstream || r.Upstream != 33*time.Millisecond ||
		r.BytesSent != 150 || r.ClientAddr != "10.0.0.7" || r.PID != 42 || r.HasLua {
		t.Fatalf("bad decode: %+v", r)
	}
	if !plausible(&ev, ev.Status, &r) {
		t.Fatal("not plausible")
	}
	if r.URITruncated || r.HostTruncated {
		t.Fatalf("short values marked as cut: %+v", r)
	}
	// Truncated URI: the buffer holds 160 bytes of a longer one.
	ev.UriLen = 500
	clock{}.toRequest(&ev, ev.Status, &r)
	if len(r.URI) != 160 || !r.URITruncated || r.HostTruncated {
		t.Fatalf("truncated uri has %d bytes, URITruncated %v HostTruncated %v", len(r.URI), r.URITruncated, r.HostTruncated)
	}
	// Exactly as long as the buffer: complete, not cut.
	ev.UriLen = model.MaxURILen
	clock{}.toRequest(&ev, ev.Status, &r)
	if r.URITruncated {
		t.Fatal("a URI of exactly MaxURILen bytes marked as cut")
	}
	// Truncated Host.
	ev = sampleEvent()
	ev.HostLen = setStr(ev.Host[:], strings.Repeat("h", 100))
	clock{}.toRequest(&ev, ev.Status, &r)
	if r.Host != strings.Repeat("h", 64) || !r.HostTruncated || r.URITruncated {
		t.Fatalf("truncated host %q, HostTruncated %v URITruncated %v", r.Host, r.HostTruncated, r.URITruncated)
	}
	// Wrong layout symptoms.
	ev = sampleEvent()
	ev.MethodLen = setStr(ev.Method[:], "POST")
	clock{}.toRequest(&ev, ev.Status, &r)
	if plausible(&ev, ev.Status, &r) {
		t.Fatal("method name disagreeing with the method bit accepted")
	}
	// No nginx clock: kernel time, ms precision.
	ev = sampleEvent()
	ev.Flags |= fNoClock
	ev.KtimeNs = uint64(time.Unix(1_796_000_001, 20_400_000).UnixNano())
	clock{}.toRequest(&ev, ev.Status, &r)
	if r.Latency != 30*time.Millisecond {
		t.Fatalf("fallback latency %v", r.Latency)
	}
	// Lua phases.
	ev = sampleEvent()
	ev.Flags |= fHasLua
	for i := range ev.LuaNs {
		ev.LuaNs[i] = uint32(i+1) * 1000
	}
	clock{}.toRequest(&ev, ev.Status, &r)
	if !r.HasLua || r.LuaPhases[model.LuaLog] != 6*time.Microsecond || r.LuaPhases[model.LuaBalancer] != 7*time.Microsecond {
		t.Fatalf("lua %+v", r.LuaPhases)
	}
}

// The listener's first 4 sockaddr bytes: the family in host order, the port in network order.
func TestToRequestListener(t *testing.T) {
	be := func(port uint16) uint16 { return port>>8 | port<<8 }
	for _, c := range []struct {
		name   string
		family uint16
		port   uint16 // as the record holds it
		flags  uint32
		want   model.Request
	}{
		{"ipv4", afInet, be(8000), 0, model.Request{ListenerKnown: true, LocalPort: 8000}},
		{"ipv6", afInet6, be(8443), 0, model.Request{ListenerKnown: true, LocalPort: 8443}},
		{"unix", afUnix, 0x6d2f, 0, model.Request{ListenerKnown: true, UnixListener: true}},
		{"read error", afInet, be(8000), fListenErr, model.Request{}},
		{"unknown family", 17, be(8000), 0, model.Request{}},
		{"nothing read", 0, 0, 0, model.Request{}},
	} {
		ev := sampleEvent()
		ev.Family, ev.LocalPort, ev.Flags = c.family, c.port, c.flags
		var r model.Request
		clock{}.toRequest(&ev, ev.Status, &r)
		if r.ListenerKnown != c.want.ListenerKnown || r.UnixListener != c.want.UnixListener || r.LocalPort != c.want.LocalPort {
			t.Errorf("%s: known %v unix %v port %d, want %v %v %d", c.name, r.ListenerKnown, r.UnixListener, r.LocalPort,
				c.want.ListenerKnown, c.want.UnixListener, c.want.LocalPort)
		}
		if !plausible(&ev, ev.Status, &r) {
			t.Errorf("%s: a request whose listener is unknown must still count", c.name)
		}
	}
}

func TestFinalStatus(t *testing.T) {
	for _, c := range []struct {
		status     uint64
		rc         int64
		sent, want uint64
	}{
		{200, 0, 100, 200},
		{0, 499, 0, 499},   // client closed before a response
		{200, 499, 0, 499}, // status set but nothing sent: nginx logs the rc
		{200, 499, 10, 200},
		{0, 400, 0, 400},
		{0, -1, 0, 0}, // NGX_ERROR is not a status
		{502, 0, 300, 502},
	} {
		if got := finalStatus(c.status, c.rc, c.sent); uint64(got) != c.want {
			t.Errorf("finalStatus(%d, %d, %d) = %d, want %d", c.status, c.rc, c.sent, got, c.want)
		}
	}
}

func TestDecodeCalib(t *testing.T) {
	l := nginxlayout.Debian1221
	cb := new(rawCalib)
	cb.Ev = sampleEvent()
	cb.Ev.Kind = evCalib
	cb.Ev.HostLen = 0
	cb.S_off = uint32(l.Start)
	cb.SnapLen = uint32(len(cb.Snap))
	binary.LittleEndian.PutUint64(cb.Snap[l.Status():], 404)
	cb.HostLen[0] = setStr(cb.Host[0][:], "right.example")
	cb.HostLen[1] = setStr(cb.Host[1][:], "wrong.example")
	cb.Up[1] = bpfUp(0x1000, 1, 72, 0x2000, 7)
	cb.Cscf = 0x5000
	cb.SnLen[0] = setStr(cb.Sn[0][:], "wrong.server")
	cb.SnLen[1] = setStr(cb.Sn[1][:], "default.server")
	var r model.Request
	if err := (clock{}).decodeCalib(cb, l, 64, &r); err != nil {
		t.Fatal(err)
	}
	if r.Status != 404 || r.Host != "right.example" || r.Upstream != 7*time.Millisecond || !r.HasUpstream {
		t.Fatalf("%+v", r)
	}
	// No Host sent: $host is the server's server_name, when its offset is known.
	cb.HostLen[0] = 0
	if err := (clock{}).decodeCalib(cb, l, 64, &r); err != nil || r.Host != "default.server" {
		t.Fatalf("no Host, server_name at 64: %q %v", r.Host, err)
	}
	if err := (clock{}).decodeCalib(cb, l, 0, &r); err != nil || r.Host != "" {
		t.Fatalf("no Host, server_name offset unknown: %q %v", r.Host, err)
	}
	// Long values: the learnt candidate's length decides, not another candidate's.
	long := strings.Repeat("x", 70)
	cb.HostLen[0] = setStr(cb.Host[0][:], long)
	if err := (clock{}).decodeCalib(cb, l, 64, &r); err != nil || r.Host != long[:64] || !r.HostTruncated {
		t.Fatalf("long Host: %q cut %v %v", r.Host, r.HostTruncated, err)
	}
	cb.HostLen[0] = setStr(cb.Host[0][:], "right.example")
	cb.HostLen[1] = setStr(cb.Host[1][:], long)
	if err := (clock{}).decodeCalib(cb, l, 64, &r); err != nil || r.HostTruncated {
		t.Fatalf("another candidate's long Host marked this one cut: %+v %v", r, err)
	}
	cb.HostLen[0], cb.HostLen[1] = 0, setStr(cb.Host[1][:], "wrong.example")
	cb.SnLen[1] = setStr(cb.Sn[1][:], long)
	if err := (clock{}).decodeCalib(cb, l, 64, &r); err != nil || r.Host != long[:64] || !r.HostTruncated {
		t.Fatalf("long server_name: %q cut %v %v", r.Host, r.HostTruncated, err)
	}
	cb.SnLen[1] = setStr(cb.Sn[1][:], "default.server")
	cb.S_off = 0 // the BPF scan found no start_sec: strings were not captured
	if err := (clock{}).decodeCalib(cb, l, 64, &r); err == nil {
		t.Fatal("decoded a calibration event whose strings were not captured")
	}
}

func bpfUp(ptr, nelts, size, pool, sum uint64) bpf.NginxReqNginxreqUpcand {
	return bpf.NginxReqNginxreqUpcand{Ptr: ptr, Nelts: nelts, Size: size, Pool: pool, SumMs: sum}
}

// hostAfterURI moves ev's Host from its own buffer to right after the URI's bytes, as the
// program places a Host it read apart (running on into Host after a long URI).
func hostAfterURI(ev *rawEvent) {
	ul, hl := min(int(ev.UriLen), len(ev.Uri)), min(int(ev.HostLen), len(ev.Host))
	host := ev.Host
	ev.Host = [len(ev.Host)]int8{}
	copy(strs(ev)[ul:], host[:hl])
	ev.HostOff = uint32(ul)
	ev.Flags |= fHostInURI
}

// TestShortRecords: a request record ends where its strings do (the program sends no more),
// decodes as the whole event would, and is refused when it is shorter than its own lengths.
func TestShortRecords(t *testing.T) {
	full := sampleEvent()
	full.AddrLen = 0
	hostAfterURI(&full)
	bytesOf := func(ev *rawEvent) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(ev)), eventSize) }
	n := eventLen(&full)
	if n != eventHead+len("/users/1?x=1")+len("api.example.com") || n >= eventSize {
		t.Fatalf("record of %d bytes for a %d-byte URI and a %d-byte Host (head %d)", n, full.UriLen, full.HostLen, eventHead)
	}
	var r record
	var c rawCalib
	// The record type is reused: a previous, whole event must leave nothing behind.
	prev := sampleEvent()
	prev.UriLen = setStr(prev.Uri[:], strings.Repeat("/x", 80))
	if err := parseRecord(bytesOf(&prev), &r, &c); err != nil {
		t.Fatal(err)
	}
	if err := parseRecord(bytesOf(&full)[:n], &r, &c); err != nil {
		t.Fatal(err)
	}
	var got, want model.Request
	clock{}.toRequest(&r.ev, r.ev.Status, &got)
	clock{}.toRequest(&full, full.Status, &want)
	if !reflect.DeepEqual(got, want) || r.ev.Addr != ([48]int8{}) || r.ev.Uri[n-eventHead] != 0 {
		t.Fatalf("short record decoded as %+v, want %+v", got, want)
	}
	// Shorter than its URI, or cut before the address it says it has: refused.
	if err := parseRecord(bytesOf(&full)[:n-1], &r, &c); !errors.Is(err, errShortRecord) {
		t.Fatalf("record shorter than its URI: %v", err)
	}
	withAddr := sampleEvent()
	if err := parseRecord(bytesOf(&withAddr)[:eventLen(&full)], &r, &c); !errors.Is(err, errShortRecord) {
		t.Fatalf("record cut before its address: %v", err)
	}
	if err := parseRecord(bytesOf(&full)[:eventHead-1], &r, &c); !errors.Is(err, errShortRecord) {
		t.Fatalf("record shorter than the head: %v", err)
	}

	// After a long URI the Host runs on into Host's buffer: the record still ends after it,
	// and one cut inside it is refused.
	long := sampleEvent()
	long.AddrLen = 0
	uri := "/" + strings.Repeat("u", model.MaxURILen-11)
	long.UriLen = setStr(long.Uri[:], uri)
	apart := long
	hostAfterURI(&long)
	n = eventLen(&long)
	if want := eventHead + len(uri) + len("api.example.com"); n != want {
		t.Fatalf("record of %d bytes for a Host after a %d-byte URI, want %d", n, len(uri), want)
	}
	if err := parseRecord(bytesOf(&long)[:n], &r, &c); err != nil {
		t.Fatal(err)
	}
	clock{}.toRequest(&r.ev, r.ev.Status, &got)
	clock{}.toRequest(&apart, apart.Status, &want)
	if !reflect.DeepEqual(got, want) || got.Host != "api.example.com" || got.URI != uri {
		t.Fatalf("record with the Host after a long URI decoded as %+v, want %+v", got, want)
	}
	if err := parseRecord(bytesOf(&long)[:n-1], &r, &c); !errors.Is(err, errShortRecord) {
		t.Fatalf("record cut inside its Host: %v", err)
	}
}

// hostInURI is sampleEvent as the program sends an HTTP/1 request whose Host it read with
// the URI: one span of the client's header buffer, the Host's bytes at HostOff.
func hostInURI(host string) rawEvent {
	ev := sampleEvent()
	ev.AddrLen = 0
	ev.Host = [len(ev.Host)]int8{}
	line := "/users/1?x=1 HTTP/1.1\r\nHost: "
	setStr(ev.Uri[:], line+host)
	ev.HostOff = uint32(len(line))
	ev.HostLen = uint32(len(host))
	ev.Flags |= fHostInURI
	return ev
}

// TestHostInURI: a Host read with the URI decodes as one read apart, the record ends after
// it, a long one is cut at the Host buffer's size, and one said to lie beyond the URI's
// buffer is refused.
func TestHostInURI(t *testing.T) {
	bytesOf := func(ev *rawEvent) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(ev)), eventSize) }
	ev := hostInURI("api.example.com")
	n := eventLen(&ev)
	if want := eventHead + int(ev.HostOff) + len("api.example.com"); n != want {
		t.Fatalf("record of %d bytes, want %d (to the Host's end)", n, want)
	}
	var r record
	var c rawCalib
	if err := parseRecord(bytesOf(&ev)[:n], &r, &c); err != nil {
		t.Fatal(err)
	}
	var got, want model.Request
	clock{hosts: newHostCache()}.toRequest(&r.ev, r.ev.Status, &got)
	apart := sampleEvent()
	apart.AddrLen = 0
	clock{}.toRequest(&apart, apart.Status, &want)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded as %+v, want %+v", got, want)
	}
	if err := parseRecord(bytesOf(&ev)[:n-1], &r, &c); !errors.Is(err, errShortRecord) {
		t.Fatalf("record cut inside its Host: %v", err)
	}

	long := hostInURI(strings.Repeat("h", 100))
	if err := parseRecord(bytesOf(&long)[:eventLen(&long)], &r, &c); err != nil {
		t.Fatal(err)
	}
	clock{}.toRequest(&r.ev, r.ev.Status, &got)
	if got.Host != strings.Repeat("h", model.MaxHostLen) || !got.HostTruncated {
		t.Fatalf("long Host decoded as %q (cut %v)", got.Host, got.HostTruncated)
	}

	cb := new(rawCalib)
	cb.Ev = hostInURI("api.example.com")
	cb.Ev.Kind, cb.Ev.HostOff = evCalib, 1<<31
	if err := parseRecord(unsafe.Slice((*byte)(unsafe.Pointer(cb)), calibSize), &r, &c); err == nil {
		t.Error("a calibration record flagged with its Host in the URI's buffer accepted")
	}
	for _, off := range []uint32{uint32(strsLen) - 14, uint32(strsLen), 1 << 31} {
		bad := hostInURI("api.example.com")
		bad.HostOff = off
		if err := parseRecord(bytesOf(&bad), &r, &c); err == nil {
			t.Errorf("Host at %d of the strings' %d bytes accepted", off, strsLen)
		}
	}
}

func FuzzDecode(f *testing.F) {
	ev := sampleEvent()
	f.Add(unsafe.Slice((*byte)(unsafe.Pointer(&ev)), eventSize))
	ev.AddrLen = 0
	f.Add(unsafe.Slice((*byte)(unsafe.Pointer(&ev)), eventLen(&ev)))
	after := ev
	hostAfterURI(&after)
	f.Add(unsafe.Slice((*byte)(unsafe.Pointer(&after)), eventLen(&after))) // as the program sends it
	in := hostInURI("api.example.com")
	f.Add(unsafe.Slice((*byte)(unsafe.Pointer(&in)), eventLen(&in)))
	cb := new(rawCalib)
	cb.Ev = sampleEvent()
	cb.Ev.Kind = evCalib
	cb.S_off = 960
	cb.SnapLen = 2048
	f.Add(unsafe.Slice((*byte)(unsafe.Pointer(cb)), calibSize))
	flagged := *cb
	flagged.Ev.Flags |= fHostInURI
	flagged.Ev.HostOff = 1000
	f.Add(unsafe.Slice((*byte)(unsafe.Pointer(&flagged)), calibSize))
	f.Add([]byte{1, 0, 0, 0})
	f.Add([]byte{2, 0, 0})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var r record
		var c rawCalib
		var req model.Request
		if err := parseRecord(raw, &r, &c); err != nil {
			return
		}
		clock{}.toRequest(&r.ev, r.ev.Status, &req)
		plausible(&r.ev, r.ev.Status, &req)
		if len(req.Method) > 16 || len(req.Host) > 64 || len(req.URI) > 160 || len(req.ClientAddr) > 48 {
			t.Fatalf("string longer than its buffer: %+v", req)
		}
		if req.URITruncated != (r.ev.UriLen > model.MaxURILen) || req.HostTruncated != (r.ev.HostLen > model.MaxHostLen) {
			t.Fatalf("cut flags %v/%v for lengths %d/%d", req.URITruncated, req.HostTruncated, r.ev.UriLen, r.ev.HostLen)
		}
		if r.calib != nil {
			s := calibSample(r.calib, 1_796_000_000)
			if lay, err := nginxlayout.Analyze(s); err == nil {
				clock{}.decodeCalib(r.calib, lay, 64, &req)
			}
			nginxlayout.ServerName(s)
			clock{}.decodeCalib(r.calib, nginxlayout.Debian1221, 48, &req)
			if len(req.Host) > 64 {
				t.Fatalf("host longer than its buffer: %q", req.Host)
			}
		}
	})
}

// TestLearningFailureIsReported: a binary whose snapshots never reveal a layout ends in mode
// "failed" with an error, instead of silently counting nothing.
func TestLearningFailureIsReported(t *testing.T) {
	p := &Probes{opts: Options{Now: time.Now}, bins: map[binKey]*nginxBin{}, byID: map[uint32]*nginxBin{},
		gws: map[discovery.GatewayID]*gateway{}}
	p.calPool.New = func() any { return new(rawCalib) }
	b := &nginxBin{key: binKey{1, 2}, exe: "/proc/1/exe", id: 0, learner: nginxlayout.NewLearner(learnNeed, learnMax)}
	other := &nginxBin{key: binKey{1, 3}, exe: "/proc/9/exe", id: 1, learner: nginxlayout.NewLearner(learnNeed, learnMax)}
	p.bins[b.key], p.byID[0] = b, b
	p.bins[other.key], p.byID[1] = other, other
	failing, healthy := discovery.GatewayID{PID: 1}, discovery.GatewayID{PID: 9}
	p.gws[failing], p.gws[healthy] = &gateway{bin: b}, &gateway{bin: other}
	for i := 0; i < learnMax; i++ {
		cb := new(rawCalib)
		cb.Ev.Kind = evCalib
		cb.SnapLen = uint32(len(cb.Snap))
		for j := range cb.Snap {
			cb.Snap[j] = byte(i * j)
		}
		if out, _, _ := p.calibrate(cb); len(out) != 0 {
			t.Fatalf("decoded garbage at sample %d", i)
		}
	}
	st := p.Status()
	if st.Mode != "failed" || !strings.Contains(st.Err, "no nginx request layout after 200 requests") {
		t.Fatalf("status %+v", st)
	}
	if st.DecodeErrors != learnMax {
		t.Fatalf("%d decode errors, want %d (every calibration event accounted for)", st.DecodeErrors, learnMax)
	}
	// Only the gateway of the failed binary is listed: the agent moves just that one.
	if f := p.Failed(); len(f) != 1 || f[failing] == nil || !strings.Contains(f[failing].Error(), "/proc/1/exe") {
		t.Fatalf("Failed() = %v, want only %v", f, failing)
	}
	t.Log(st.Err)
}

func TestIgnorable(t *testing.T) {
	var ev rawEvent
	ev.Kind, ev.MethodBit, ev.HttpVersion = evRequest, 1, 1000
	var r model.Request
	clock{}.toRequest(&ev, 0, &r)
	if !ignorable(&ev, &r) {
		t.Fatal("pseudo-request (no request line, no status, nothing sent) not ignored")
	}
	ev.Rc = 400 // bad request line: nginx logs a 400
	clock{}.toRequest(&ev, 0, &r)
	if ignorable(&ev, &r) {
		t.Fatal("400 on the request line ignored")
	}
	ev = sampleEvent()
	ev.Status = 0
	ev.Sent = 0
	clock{}.toRequest(&ev, 0, &r)
	if ignorable(&ev, &r) {
		t.Fatal("a request with a request line ignored")
	}
}

// TestNginxOffsetsFitTheProgram: the BPF program reads start_sec's neighbours out of a
// 128-byte copy and masks the indexes for the verifier; the offsets nginxlayout gives must
// be where the masks leave them, and each candidate list as long as the record's arrays.
func TestNginxOffsetsFitTheProgram(t *testing.T) {
	for name, off := range map[string]int{"msec": nginxlayout.SToMsec, "method": nginxlayout.SToMethod, "http_version": nginxlayout.SToHTTPVersion} {
		if off%8 != 0 || off/8 != (off/8)&3 {
			t.Errorf("start_sec + %d (%s): not a u64 index below 4", off, name)
		}
	}
	for name, off := range map[string]int{"unparsed_uri": nginxlayout.SToUnparsedURI, "method_name": nginxlayout.SToMethodName} {
		if off%8 != 0 || off/8 != (off/8)&14 {
			t.Errorf("start_sec + %d (%s): not an even u64 index below 16", off, name)
		}
	}
	var cb rawCalib
	if len(cb.Up) != len(nginxlayout.UpstreamCandidates) || len(cb.HostLen) != len(nginxlayout.StartDistances) ||
		len(cb.SnLen) != len(nginxlayout.ServerNameCandidates) {
		t.Errorf("candidate arrays: record %d/%d/%d, nginxlayout %d/%d/%d", len(cb.Up), len(cb.HostLen), len(cb.SnLen),
			len(nginxlayout.UpstreamCandidates), len(nginxlayout.StartDistances), len(nginxlayout.ServerNameCandidates))
	}
}

// TestHostCache: the decoder hands out the same Host string for the same host instead of
// allocating it again, stays bounded, and decodes exactly as without it.
func TestHostCache(t *testing.T) {
	ev := sampleEvent()
	var plain, cached model.Request
	c := clock{hosts: newHostCache()}
	clock{}.toRequest(&ev, ev.Status, &plain)
	c.toRequest(&ev, ev.Status, &cached)
	if !reflect.DeepEqual(plain, cached) {
		t.Fatalf("with the cache %+v, without %+v", cached, plain)
	}
	without := testing.AllocsPerRun(100, func() { clock{}.toRequest(&ev, ev.Status, &plain) })
	with := testing.AllocsPerRun(100, func() { c.toRequest(&ev, ev.Status, &cached) })
	if with != without-1 {
		t.Fatalf("%v allocations per event with the cache, %v without", with, without)
	}
	for i := range 3 * maxHosts {
		ev.HostLen = setStr(ev.Host[:], fmt.Sprintf("h%d.example.com", i))
		c.toRequest(&ev, ev.Status, &cached)
		if cached.Host != fmt.Sprintf("h%d.example.com", i) || len(c.hosts.m) > maxHosts {
			t.Fatalf("host %q, %d cached", cached.Host, len(c.hosts.m))
		}
	}
	var r record
	if err := parseRecord([]byte{2, 0, 0, 0}, &r, nil); err == nil {
		t.Fatal("a calibration record parsed without a buffer")
	}
}

// TestURISlab: URIs copied into the slab stay intact however many follow (a chunk's bytes are
// never reused), and cost no allocation of their own.
func TestURISlab(t *testing.T) {
	c := clock{hosts: newHostCache(), uris: new(stringSlab)}
	ev := sampleEvent()
	got := make([]model.Request, 3*slabChunk/40)
	for i := range got {
		ev.UriLen = setStr(ev.Uri[:], fmt.Sprintf("/users/%d?page=%d", i, i*7))
		if i%50 == 0 {
			ev.UriLen = setStr(ev.Uri[:], "/"+strings.Repeat("x", model.MaxURILen-1))
		}
		c.toRequest(&ev, ev.Status, &got[i])
	}
	for i, r := range got {
		want := fmt.Sprintf("/users/%d?page=%d", i, i*7)
		if i%50 == 0 {
			want = "/" + strings.Repeat("x", model.MaxURILen-1)
		}
		if r.URI != want {
			t.Fatalf("request %d: URI %q, want %q", i, r.URI, want)
		}
	}
	// As the program sends a GET without the client address: the URI is the only string
	// that is not a constant or cached.
	ev.Flags |= fMethodBit
	ev.AddrLen = 0
	plain := clock{hosts: newHostCache()}
	var r model.Request
	without := testing.AllocsPerRun(1000, func() { plain.toRequest(&ev, ev.Status, &r) })
	with := testing.AllocsPerRun(1000, func() { c.toRequest(&ev, ev.Status, &r) })
	if without != 1 || with > 0.1 {
		t.Fatalf("%v allocations per event with the slab, %v without", with, without)
	}
	ev.UriLen = 0
	if c.toRequest(&ev, ev.Status, &r); r.URI != "" {
		t.Fatalf("empty URI decoded as %q", r.URI)
	}
}
