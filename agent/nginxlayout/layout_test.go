package nginxlayout

import (
	"encoding/binary"
	"errors"
	"math/rand"
	"testing"
)

// build describes a synthetic ngx_http_request_t, laid out as one nginx build would.
type build struct {
	name string
	U    int    // upstream_states
	H    int    // headers_out
	D    int    // start_sec - headers_out
	elt  uint64 // sizeof(ngx_table_elt_t)
	// upstream: nelts and element size of upstream_states (0: not proxied)
	upNelts, upSize uint64
	// manyHeaders: headers_in outgrew its first part (> 20 headers): last != &part
	manyHeaders bool
	// luaRemoved: Lua removed a request header and a response header (the lua module's
	// removal splits a part and sets nalloc to the new last part's count)
	luaRemoved bool
	// badLine: a 400 on the request line: headers_in never initialised
	badLine bool
	method  uint64
	version uint64
	status  uint64
}

const (
	rAddr    = 0x55d0_0000_1000
	poolAddr = 0x55d0_0000_0800
	upAddr   = 0x55d0_0000_3000
	now      = 1_796_000_000
)

func put(b []byte, off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }

func putList(b []byte, off int, nalloc, size, nelts uint64, selfRef bool) {
	last := uint64(rAddr + off + 8)
	if !selfRef {
		last = 0x55d0_0000_7000
	}
	put(b, off, last)
	put(b, off+8, 0x55d0_0000_5000+uint64(off)) // part.elts
	put(b, off+16, nelts)
	put(b, off+24, 0) // part.next
	put(b, off+32, size)
	put(b, off+40, nalloc)
	put(b, off+48, poolAddr)
}

func (bl build) sample() Sample {
	b := make([]byte, 2048)
	binary.LittleEndian.PutUint32(b, Signature)
	put(b, ConnOffset, 0x55d0_0000_9000)
	put(b, bl.U+8, poolAddr)
	s := Sample{Snap: b, Addr: rAddr, NowSec: now}
	if bl.upNelts > 0 {
		put(b, bl.U, upAddr)
		for i, u := range UpstreamCandidates {
			if u == bl.U {
				s.Upstream[i] = UpstreamArray{Ptr: upAddr, Nelts: bl.upNelts, Size: bl.upSize, Pool: poolAddr}
			}
		}
	}
	if !bl.badLine {
		nelts := uint64(5)
		if bl.manyHeaders {
			nelts = 20
		}
		if bl.luaRemoved {
			putList(b, bl.U+24, 2, bl.elt, nelts, false)
		} else {
			putList(b, bl.U+24, 20, bl.elt, nelts, !bl.manyHeaders)
		}
	}
	if bl.luaRemoved {
		putList(b, bl.H, 0, bl.elt, 3, false)
	} else {
		putList(b, bl.H, 20, bl.elt, 3, true)
	}
	putList(b, bl.H+listSize, 4, bl.elt, 0, true)
	put(b, bl.H+HOToStatus, bl.status)
	put(b, bl.H+HOToServer, 9)
	put(b, bl.H+HOToServer+8, 0x55d0_0000_6000)
	S := bl.H + bl.D
	put(b, S-16, 0)  // request_body
	put(b, S-8, 0)   // lingering_time
	put(b, S, now-1) // start_sec
	put(b, S+8, 999) // start_msec
	put(b, S+16, bl.method)
	put(b, S+24, bl.version)
	put(b, S+SToMethodName, 3)
	s.BPFStart = S
	s.MethodName = MethodForBit(bl.method)
	if s.MethodName == "" {
		s.MethodName = "FOO"
	}
	return s
}

var builds = []build{
	{name: "debian-1.22.1", U: 80, H: 536, D: 424, elt: 48, method: 2, version: 1001, status: 200},
	{name: "1.22-no-cache", U: 72, H: 528, D: 424, elt: 48, method: 8, version: 1000, status: 404},
	{name: "1.25", U: 80, H: 520, D: 360, elt: 56, method: 4, version: 2000, status: 200},
	{name: "1.29.8-count", U: 80, H: 528, D: 368, elt: 56, method: 2, version: 1001, status: 502, upNelts: 2, upSize: 72},
	{name: "kong-3.10", U: 72, H: 520, D: 368, elt: 56, method: 0x4000, version: 1001, status: 201, upNelts: 1, upSize: 112},
	{name: "debian-proxied", U: 80, H: 536, D: 424, elt: 48, method: 2, version: 1001, status: 200, upNelts: 1, upSize: 72},
	{name: "more-than-20-headers", U: 80, H: 536, D: 424, elt: 48, method: 2, version: 1001, status: 200, manyHeaders: true},
	{name: "lua-removed-headers", U: 80, H: 520, D: 360, elt: 56, method: 2, version: 1001, status: 200, upNelts: 1, upSize: 112, luaRemoved: true},
	{name: "400-bad-request-line", U: 80, H: 536, D: 424, elt: 48, method: 1, version: 1000, status: 400, badLine: true},
	{name: "status-0", U: 80, H: 536, D: 424, elt: 48, method: 2, version: 9, status: 0},
}

func TestAnalyzeBuilds(t *testing.T) {
	for _, bl := range builds {
		t.Run(bl.name, func(t *testing.T) {
			got, err := Analyze(bl.sample())
			if err != nil {
				t.Fatalf("Analyze: %v", err)
			}
			want := Layout{HeadersOut: bl.H, Start: bl.H + bl.D, UpstreamStates: bl.U}
			if got != want {
				t.Fatalf("got %v, want %v", got, want)
			}
			if got.HostCandidate() < 0 || got.UpstreamCandidate() < 0 {
				t.Fatalf("no capture index for %v", got)
			}
		})
	}
}

func TestDebianMatchesFacts(t *testing.T) {
	l := Debian1221
	// Read under a debugger: headers_in.server 496, headers_out.status 648, unparsed_uri 1056,
	// method_name 1072, upstream_states 80.
	if l.Server() != 496 || l.Status() != 648 || l.UnparsedURI() != 1056 || l.MethodName() != 1072 ||
		l.UpstreamStates != 80 || l.Distance() != 424 {
		t.Fatalf("Debian 1.22.1 layout disagrees with the offsets read under a debugger: %v", l)
	}
}

func TestAnalyzeRejects(t *testing.T) {
	good := builds[0]
	cases := []struct {
		name string
		mod  func(s *Sample)
		want error
	}{
		{"short", func(s *Sample) { s.Snap = s.Snap[:1000] }, ErrShort},
		{"signature", func(s *Sample) { s.Snap[0] = 'X' }, ErrSignature},
		{"no-trailers", func(s *Sample) { put(s.Snap, good.H+listSize+40, 20) }, ErrNoHeaders},
		{"pool-mismatch", func(s *Sample) { put(s.Snap, good.H+listSize+48, 1234) }, ErrNoHeaders},
		{"bad-status", func(s *Sample) { put(s.Snap, good.H+HOToStatus, 7) }, ErrNoHeaders},
		{"stale-start", func(s *Sample) { put(s.Snap, good.H+good.D, now-3*86400) }, ErrNoStart},
		{"bad-version", func(s *Sample) { put(s.Snap, good.H+good.D+24, 1002) }, ErrNoStart},
		{"two-method-bits", func(s *Sample) { put(s.Snap, good.H+good.D+16, 6) }, ErrNoStart},
		{"bpf-disagrees", func(s *Sample) { s.BPFStart = 1000 }, ErrStartBPF},
		{"no-pool", func(s *Sample) { put(s.Snap, good.U+8, 0) }, ErrNoUpstream},
		{"method-mismatch", func(s *Sample) { s.MethodName = "POST" }, ErrImplausible},
		{"method-not-token", func(s *Sample) { s.MethodName = "G T" }, ErrImplausible},
		{"no-connection", func(s *Sample) { put(s.Snap, ConnOffset, 0) }, ErrImplausible},
		{"upstream-other-pool", func(s *Sample) {
			put(s.Snap, good.U, upAddr)
			s.Upstream[1] = UpstreamArray{Ptr: upAddr, Nelts: 1, Size: 72, Pool: 42}
		}, ErrNoUpstream},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := good.sample()
			c.mod(&s)
			if _, err := Analyze(s); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func TestLearnerNeedsAgreement(t *testing.T) {
	l := NewLearner(3, 10)
	s := builds[0].sample()
	for i := 0; i < 2; i++ {
		if lay, err := l.Add(s); lay != nil || err != nil {
			t.Fatalf("learnt too early: %v %v", lay, err)
		}
	}
	lay, err := l.Add(s)
	if err != nil || lay == nil || *lay != Debian1221 {
		t.Fatalf("got %v %v, want %v", lay, err, Debian1221)
	}
}

func TestLearnerMixedSamplesAndOutlier(t *testing.T) {
	l := NewLearner(5, 50)
	var got *Layout
	// Different requests of one build (GET, proxied, 400, many headers) agree on one layout;
	// garbage in between is rejected without stopping the learner.
	rng := rand.New(rand.NewSource(1))
	debian := []build{builds[0], builds[5], builds[6], builds[7], builds[8]}
	for i := 0; got == nil && i < 20; i++ {
		garbage := make([]byte, 2048)
		rng.Read(garbage)
		if lay, err := l.Add(Sample{Snap: garbage, NowSec: now}); err != nil || lay != nil {
			t.Fatalf("garbage: %v %v", lay, err)
		}
		var err error
		got, err = l.Add(debian[i%len(debian)].sample())
		if err != nil {
			t.Fatal(err)
		}
	}
	if got == nil || *got != Debian1221 {
		t.Fatalf("got %v", got)
	}
}

func TestLearnerDisagreementBlocks(t *testing.T) {
	// Two builds at once (should not happen for one binary): no 80% majority, never learns.
	l := NewLearner(3, 12)
	var err error
	for i := 0; i < 12; i++ {
		_, err = l.Add(builds[i%2].sample())
		if i < 11 && err != nil {
			t.Fatal(err)
		}
	}
	if err == nil {
		t.Fatal("learnt from two disagreeing layouts")
	}
}

func TestLearnerGivesUpOnGarbage(t *testing.T) {
	l := NewLearner(3, 200)
	rng := rand.New(rand.NewSource(2))
	var err error
	for i := 0; i < 200; i++ {
		b := make([]byte, 2048)
		rng.Read(b)
		binary.LittleEndian.PutUint32(b, Signature)
		var lay *Layout
		lay, err = l.Add(Sample{Snap: b, NowSec: now, BPFStart: 8 * rng.Intn(256)})
		if lay != nil {
			t.Fatalf("learnt %v from garbage", lay)
		}
	}
	if err == nil {
		t.Fatal("no error after max samples")
	}
}

func FuzzAnalyze(f *testing.F) {
	for _, bl := range builds {
		s := bl.sample()
		f.Add(s.Snap, int64(s.NowSec), s.BPFStart, s.MethodName)
	}
	f.Add(make([]byte, 2048), int64(now), 0, "")
	f.Fuzz(func(t *testing.T, snap []byte, nowSec int64, bpfStart int, method string) {
		s := Sample{Snap: snap, NowSec: nowSec, BPFStart: bpfStart, MethodName: method}
		lay, err := Analyze(s)
		if err != nil {
			return
		}
		// Whatever Analyze accepts must satisfy the fingerprints it claims.
		if lay.HeadersOut < 0 || lay.Start+32 > len(snap) || lay.HeadersOut+2*listSize > len(snap) {
			t.Fatalf("out of bounds layout %v for %d bytes", lay, len(snap))
		}
		if binary.LittleEndian.Uint32(snap) != Signature || lay.HostCandidate() < 0 || lay.UpstreamCandidate() < 0 {
			t.Fatalf("accepted %v without signature or at an unknown distance", lay)
		}
		if !startAt(snap, lay.Start, nowSec) || !validStatus(u64(snap, lay.Status())) {
			t.Fatalf("accepted %v with implausible start/status", lay)
		}
		l := NewLearner(1, 1)
		if got, _ := l.Add(s); got == nil || *got != lay {
			t.Fatalf("learner disagrees with Analyze: %v vs %v", got, lay)
		}
	})
}

// srvSample adds a core srv conf capture to s: server_name at off (48: no file_name/line,
// 64: with them), named name; server_names elements of eltSize bytes.
func srvSample(s Sample, off int, name string, eltSize uint64) Sample {
	const srv, cscf, ctx = 0x55d0_0001_0000, 0x55d0_0002_0000, 0x55d0_0003_0000
	put(s.Snap, SrvConfOffset, srv)
	c := SrvConf{SrvConf: srv, Cscf: cscf, CtxSrvConf: srv}
	h := &c.Head
	h[0], h[1], h[2], h[3], h[4] = 0x55d0_0004_0000, 2, eltSize, 4, 0x55d0_0005_0000
	h[5] = ctx
	if off == 48 {
		h[6], h[7] = uint64(len(name)), 0x55d0_0006_0000
		h[8], h[9] = 512, 4096 // connection_pool_size, request_pool_size
		h[10], h[11] = 1024, 4 // client_header_buffer_size, large_client_header_buffers.num
		c.Names[0] = name
		c.Names[1] = "\x00\x00" // whatever sits at 64 is no string
	} else {
		h[6], h[7] = 0x55d0_0007_0000, 42 // file_name, line
		h[8], h[9] = uint64(len(name)), 0x55d0_0006_0000
		h[10], h[11] = 512, 4096
		c.Names[1] = name
	}
	s.Srv = c
	return s
}

func TestServerName(t *testing.T) {
	base := build{name: "debian", U: 80, H: 536, D: 424, elt: 48, method: 2, version: 1001, status: 200}.sample()
	for _, c := range []struct {
		off  int
		name string
		elt  uint64
	}{{64, "kw.test", 32}, {48, "kw.test", 24}, {64, "", 32}, {48, "", 32}, {64, "~^(www\\.)?(?<d>.+)$", 32}} {
		got, err := ServerName(srvSample(base, c.off, c.name, c.elt))
		if err != nil || got != c.off {
			t.Errorf("server_name at %d (%q): got %d, %v", c.off, c.name, got, err)
		}
	}
	bad := func(why string, want error, mod func(*Sample)) {
		t.Helper()
		s := srvSample(base, 64, "kw.test", 32)
		s.Snap = append([]byte(nil), s.Snap...)
		mod(&s)
		if got, err := ServerName(s); !errors.Is(err, want) {
			t.Errorf("%s: got %d, %v; want %v", why, got, err, want)
		}
	}
	bad("nothing captured", ErrNoSrvConf, func(s *Sample) { s.Srv = SrvConf{} })
	bad("r->srv_conf differs from the snapshot", ErrNoSrvConf, func(s *Sample) { put(s.Snap, SrvConfOffset, 8) })
	bad("ctx->srv_conf is not r->srv_conf (not module 0's conf)", ErrSrvConfCtx, func(s *Sample) { s.Srv.CtxSrvConf++ })
	bad("element size of no ngx_http_server_name_t", ErrServerNames, func(s *Sample) { s.Srv.Head[2] = 16 })
	bad("no names", ErrServerNames, func(s *Sample) { s.Srv.Head[1] = 0 })
	bad("no string anywhere", ErrServerNameAt, func(s *Sample) { s.Srv.Head[9] = 0 })
	bad("no pool sizes after it", ErrServerNameAt, func(s *Sample) { s.Srv.Head[11] = 4097 })
	bad("unreadable string", ErrServerNameStr, func(s *Sample) { s.Srv.Names[1] = "\x00\x00\x00\x00\x00\x00\x00" })
	bad("control bytes", ErrServerNameStr, func(s *Sample) { s.Srv.Names[1] = "kw\ntest" })

	// The learner's vote: 3 agreeing samples and an 80% majority, independent of the layout.
	l := NewLearner(5, 50)
	s := srvSample(base, 64, "kw.test", 32)
	for i := 0; i < 5; i++ {
		l.Add(s)
	}
	if l.ServerName() != 64 {
		t.Fatalf("learnt server_name offset %d", l.ServerName())
	}
	l = NewLearner(5, 50)
	l.Add(s)
	l.Add(s)
	if l.ServerName() != 0 {
		t.Fatal("server_name offset from 2 samples")
	}
	l.Add(s)
	l.Add(base) // no capture
	if l.ServerName() != 0 {
		t.Fatal("server_name offset with 3 of 4 samples agreeing")
	}
	lay, err := l.Add(s)
	if lay == nil || err != nil || l.ServerName() != 64 {
		t.Fatalf("layout %v %v, server_name offset %d", lay, err, l.ServerName())
	}
}

func FuzzServerName(f *testing.F) {
	base := build{name: "debian", U: 80, H: 536, D: 424, elt: 48, method: 2, version: 1001, status: 200}.sample()
	head := func(s Sample) []byte {
		b := make([]byte, 96)
		for i, v := range s.Srv.Head {
			put(b, 8*i, v)
		}
		return b
	}
	for _, c := range []struct {
		off  int
		name string
	}{{64, "kw.test"}, {48, "kw.test"}, {64, ""}} {
		s := srvSample(base, c.off, c.name, 32)
		f.Add(head(s), s.Srv.CtxSrvConf, s.Srv.Names[0], s.Srv.Names[1])
	}
	f.Fuzz(func(t *testing.T, h []byte, ctxSrv uint64, n0, n1 string) {
		s := srvSample(base, 64, "kw.test", 32)
		for i := range s.Srv.Head {
			s.Srv.Head[i] = u64(h, 8*i)
		}
		s.Srv.CtxSrvConf, s.Srv.Names = ctxSrv, [2]string{n0, n1}
		off, err := ServerName(s)
		if err != nil {
			return
		}
		i := map[int]int{48: 0, 64: 1}[off]
		if off != 48 && off != 64 || s.Srv.CtxSrvConf != s.Srv.SrvConf || !printable(s.Srv.Names[i]) {
			t.Fatalf("accepted server_name at %d: %+v", off, s.Srv)
		}
	})
}

func TestMethodForBit(t *testing.T) {
	want := map[uint64]string{
		0x0002: "GET", 0x0004: "HEAD", 0x0008: "POST", 0x0010: "PUT", 0x0020: "DELETE",
		0x0040: "MKCOL", 0x0080: "COPY", 0x0100: "MOVE", 0x0200: "OPTIONS", 0x0400: "PROPFIND",
		0x0800: "PROPPATCH", 0x1000: "LOCK", 0x2000: "UNLOCK", 0x4000: "PATCH", 0x8000: "TRACE",
		0x10000: "CONNECT",
	}
	for bit := range 64 {
		m := uint64(1) << bit
		if got := MethodForBit(m); got != want[m] {
			t.Errorf("MethodForBit(%#x) = %q, want %q", m, got, want[m])
		}
	}
	for _, m := range []uint64{0, 0x0006, 0x10002, 0x30000, ^uint64(0)} {
		if got := MethodForBit(m); got != "" {
			t.Errorf("MethodForBit(%#x) = %q, want none", m, got)
		}
	}
}
