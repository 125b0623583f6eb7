// Package nginxlayout learns, at run time, where the fields kong-watcher needs sit in nginx's
// ngx_http_request_t. Kong's binary has no debug info and the layout moves with nginx version
// and build options (checked against nginx 1.21-1.29, OpenResty and Kong's patch set), so the agent's BPF program first ships raw snapshots of r
// (calibration events) and this package finds the layout in them, from fingerprints that hold
// in every version checked, and only accepts it once several requests agree and every sample
// decodes to plausible values.
package nginxlayout

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Offsets that are the same in every nginx version checked.
const (
	// ConnOffset: r->connection is the first pointer after the 4-byte signature.
	ConnOffset = 8
	// ngx_connection_t.sent and .addr_text.
	ConnSentOffset = 72
	ConnAddrOffset = 120
	// ngx_connection_t.listening, the listener that accepted the connection (right before
	// sent since the 1.0s); the BPF program reads its sockaddr (ngx_listening_t + 8).
	ConnListeningOffset = 64
	// ngx_http_upstream_state_t.response_time.
	UpstreamRTOffset = 8
	// ngx_listening_t.sockaddr: after the socket (an int, padded) in every version.
	ListeningSockaddrOffset = 8

	// Relative to headers_out.
	HOToStatus = 112 // headers_out.status
	HOToServer = -40 // headers_in.server is the last headers_in field before headers_out
	// Relative to start_sec.
	SToMsec        = 8
	SToMethod      = 16
	SToHTTPVersion = 24
	SToRequestLine = 32
	SToUnparsedURI = 96
	SToMethodName  = 112
	SToHTTPProto   = 128
	// r->main follows schema and out: main == r for a client request. Not in the
	// list of stable fields, so it is verified on the samples before it is used.
	SToMain = 168

	listSize = 56 // sizeof(ngx_list_t)

	// Signature is r->signature, "HTTP" read as a little-endian uint32.
	Signature = 0x50545448

	// SrvConfOffset: r->srv_conf follows connection, ctx and main_conf in every version.
	// ngx_http_core_module is the first HTTP module (ctx_index 0), so r->srv_conf[0] is the
	// server's ngx_http_core_srv_conf_t (cscf), whose server_name is $host's fallback.
	SrvConfOffset = 32
	// cscfCtx: cscf->ctx (ngx_http_conf_ctx_t *), after the ngx_array_t server_names.
	cscfCtx = 40
)

// ServerNameCandidates are the possible offsets of server_name in ngx_http_core_srv_conf_t:
// right after ctx, or after the u_char *file_name and ngx_uint_t line that newer nginx
// versions put between them. The BPF program captures the string at each, in this order.
var ServerNameCandidates = [2]int{48, 64}

// StartDistances are the known values of start_sec - headers_out: up to 1.22, 1.23-1.27 and
// from 1.29.7. The BPF program captures headers_in.server for each of them, in this order.
var StartDistances = [3]int{424, 360, 368}

// UpstreamCandidates are the possible offsets of upstream_states: without and with the cache
// module (NGX_HTTP_CACHE adds r->cache before r->upstream). The BPF program captures the
// upstream array at each of them, in this order.
var UpstreamCandidates = [2]int{72, 80}

// Layout is what the hot path needs to know about one nginx binary.
type Layout struct {
	HeadersOut     int // headers_out (its headers list)
	Start          int // start_sec
	UpstreamStates int // upstream_states
}

// Status is the offset of headers_out.status.
func (l Layout) Status() int { return l.HeadersOut + HOToStatus }

// Server is the offset of headers_in.server.
func (l Layout) Server() int { return l.HeadersOut + HOToServer }

// UnparsedURI is the offset of unparsed_uri ($request_uri).
func (l Layout) UnparsedURI() int { return l.Start + SToUnparsedURI }

// MethodName is the offset of method_name.
func (l Layout) MethodName() int { return l.Start + SToMethodName }

// Distance is start_sec - headers_out.
func (l Layout) Distance() int { return l.Start - l.HeadersOut }

// HostCandidate is the index of the BPF program's headers_in.server capture for this layout,
// or -1 if it captured none at this distance.
func (l Layout) HostCandidate() int {
	for i, d := range StartDistances {
		if d == l.Distance() {
			return i
		}
	}
	return -1
}

// UpstreamCandidate is the index of the BPF program's upstream capture for this layout, or -1.
func (l Layout) UpstreamCandidate() int {
	for i, u := range UpstreamCandidates {
		if u == l.UpstreamStates {
			return i
		}
	}
	return -1
}

func (l Layout) String() string {
	return fmt.Sprintf("headers_out=%d status=%d server=%d start_sec=%d (D=%d) unparsed_uri=%d method_name=%d upstream_states=%d",
		l.HeadersOut, l.Status(), l.Server(), l.Start, l.Distance(), l.UnparsedURI(), l.MethodName(), l.UpstreamStates)
}

// Known layouts, for tests and for the log line that says which build the agent recognised.
var (
	// Debian 1.22.1 (cache module built in): the offsets read under a debugger.
	Debian1221 = Layout{HeadersOut: 536, Start: 960, UpstreamStates: 80}
	// Debian1221ServerName: its ngx_http_core_srv_conf_t has file_name and line before
	// server_name (checked on the live binary: ServerName on its calibration samples).
	Debian1221ServerName = 64
)

// UpstreamArray is the BPF program's capture of one upstream_states candidate.
type UpstreamArray struct {
	Ptr   uint64 // the pointer at r+U
	Nelts uint64
	Size  uint64
	Pool  uint64
}

// Sample is one calibration event, as far as learning is concerned.
type Sample struct {
	// Snap is the start of r as the BPF program copied it.
	Snap []byte
	// Addr is r's address in the worker.
	Addr uint64
	// NowSec is the wall clock (unix seconds) when the request finished.
	NowSec int64
	// BPFStart is the start_sec offset the BPF program's scan found (0: none).
	BPFStart int
	// Upstream holds the BPF program's captures at UpstreamCandidates.
	Upstream [2]UpstreamArray
	// MethodName is the string the BPF program read at BPFStart+SToMethodName.
	MethodName string
	// Srv is the BPF program's capture of the server's core srv conf (zero: none).
	Srv SrvConf `json:",omitempty"`
}

// SrvConf is what the BPF program read of the request's server configuration.
type SrvConf struct {
	SrvConf    uint64     // r->srv_conf
	Cscf       uint64     // r->srv_conf[0]: ngx_http_core_srv_conf_t *
	CtxSrvConf uint64     // cscf->ctx->srv_conf
	Head       [12]uint64 // the first 96 bytes of *cscf
	// Names are the strings at ServerNameCandidates (up to the BPF buffer's length).
	Names [2]string
}

// Errors of ServerName.
var (
	ErrNoSrvConf     = errors.New("no server configuration captured")
	ErrSrvConfCtx    = errors.New("r->srv_conf[0] is not a core srv conf (ctx->srv_conf != r->srv_conf)")
	ErrServerNames   = errors.New("cscf->server_names is not an array of ngx_http_server_name_t")
	ErrServerNameAt  = errors.New("server_name found at no candidate offset, or at both")
	ErrServerNameStr = errors.New("server_name is not a printable host name")
)

func isPtr(v uint64) bool { return v >= 1<<16 && v < 1<<47 }

// printable reports whether s could be a configured server name ($hostname, a host name, a
// wildcard or a regex): printable ASCII without spaces.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// ServerName finds the offset of server_name in the ngx_http_core_srv_conf_t the sample's
// request was served by. The struct must prove itself: its ctx points back to r->srv_conf,
// server_names is an ngx_array_t of ngx_http_server_name_t (24 bytes, 32 with PCRE) holding
// at least one name, and exactly one candidate holds an ngx_str_t that is followed by
// connection_pool_size and request_pool_size (multiples of 16) and, at 64, preceded by
// file_name and line. Debian 1.22.1 has them (64); the struct without them is older nginx's.
func ServerName(s Sample) (int, error) {
	c := s.Srv
	if c.SrvConf == 0 || c.Cscf == 0 {
		return 0, ErrNoSrvConf
	}
	if len(s.Snap) >= SrvConfOffset+8 && u64(s.Snap, SrvConfOffset) != c.SrvConf {
		return 0, ErrNoSrvConf
	}
	h := c.Head
	if !isPtr(h[cscfCtx/8]) || c.CtxSrvConf != c.SrvConf {
		return 0, ErrSrvConfCtx
	}
	// ngx_array_t: elts, nelts, size, nalloc, pool (a pool that is gone after start-up).
	if !isPtr(h[0]) || h[1] == 0 || h[1] > h[3] || h[2] != 24 && h[2] != 32 || h[3] > 1<<20 {
		return 0, ErrServerNames
	}
	str := func(off int) bool { return h[off/8] < 1<<16 && isPtr(h[off/8+1]) }
	poolSize := func(v uint64) bool { return v >= 64 && v < 1<<32 && v%16 == 0 }
	var at []int
	// No file_name/line: server_name at 48, connection_pool_size and request_pool_size next.
	if str(48) && poolSize(h[64/8]) && poolSize(h[72/8]) {
		at = append(at, 0)
	}
	// file_name (a path) and line before it, the pool sizes after it.
	if isPtr(h[48/8]) && h[56/8] > 0 && h[56/8] < 1<<24 && str(64) && poolSize(h[80/8]) && poolSize(h[88/8]) {
		at = append(at, 1)
	}
	if len(at) != 1 {
		return 0, ErrServerNameAt
	}
	i := at[0]
	off := ServerNameCandidates[i]
	// A failed read of the string leaves zeros, which are not printable.
	if !printable(c.Names[i]) {
		return 0, ErrServerNameStr
	}
	return off, nil
}

// Errors of Analyze, so callers and tests can tell why a sample was not used.
var (
	ErrShort       = errors.New("snapshot too short")
	ErrSignature   = errors.New("no \"HTTP\" signature at r")
	ErrNoHeaders   = errors.New("no headers_out list pair (headers, trailers) found")
	ErrAmbiguous   = errors.New("more than one headers_out candidate")
	ErrNoStart     = errors.New("no start_sec at a known distance from headers_out")
	ErrStartBPF    = errors.New("start_sec disagrees with the BPF program's scan")
	ErrNoUpstream  = errors.New("no upstream_states candidate next to r->pool")
	ErrImplausible = errors.New("decoded values are implausible")
)

func u64(b []byte, off int) uint64 {
	if off < 0 || off+8 > len(b) {
		return 0
	}
	return binary.LittleEndian.Uint64(b[off:])
}

// list reports whether an ngx_list_t initialised by ngx_list_init(l, pool, nalloc, size) sits
// at off: element size 48 or 56 (ngx_table_elt_t grew a next pointer in 1.23), the expected
// nalloc, and the request's pool. The self-reference (last == &part) is checked only as a
// hint by the caller: it breaks once a list outgrows its first part (ngx_list_init points last at the first part).
func list(b []byte, off int, nalloc uint64) (pool uint64, ok bool) {
	if off < 0 || off+listSize > len(b) {
		return 0, false
	}
	last, elts, nelts := u64(b, off), u64(b, off+8), u64(b, off+16)
	size, na, pl := u64(b, off+32), u64(b, off+40), u64(b, off+48)
	// nalloc is the list's initial size only until Lua removes an entry: the lua module's
	// header removal (ngx.req.clear_header, ngx.header.X = nil; Kong's key-auth with
	// hide_credentials on every request) splits parts and sets nalloc to the last part's
	// count, never above the initial size.
	if size != 48 && size != 56 || na > nalloc || pl == 0 || elts == 0 || last == 0 {
		return 0, false
	}
	if nelts > nalloc {
		return 0, false
	}
	return pl, true
}

func validStatus(s uint64) bool { return s == 0 || s >= 100 && s <= 999 }

func validVersion(v uint64) bool {
	switch v {
	case 9, 1000, 1001, 2000, 3000:
		return true
	}
	return false
}

func validMethodBit(m uint64) bool { return m != 0 && m <= 0x10000 && bits.OnesCount64(m) == 1 }

// methodNames are nginx's NGX_HTTP_* method bits' names (stable since 1.x; CONNECT added in
// 1.25), by the bit's position: bit 1 (0x0002) is GET. Bit 0 is NGX_HTTP_UNKNOWN.
var methodNames = [...]string{
	1: "GET", 2: "HEAD", 3: "POST", 4: "PUT", 5: "DELETE", 6: "MKCOL", 7: "COPY", 8: "MOVE",
	9: "OPTIONS", 10: "PROPFIND", 11: "PROPPATCH", 12: "LOCK", 13: "UNLOCK", 14: "PATCH",
	15: "TRACE", 16: "CONNECT",
}

// MethodForBit is the method name nginx uses for a method bit ("" for NGX_HTTP_UNKNOWN or
// anything that is not one bit). Called for every request: an index, not a map lookup.
func MethodForBit(m uint64) string {
	if !validMethodBit(m) {
		return ""
	}
	return methodNames[bits.TrailingZeros64(m)]
}

// ValidToken reports whether s is an RFC 9110 token (what a method name must be).
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c < 0x7f && c > ' ' && indexByte("!#$%&'*+-.^_`|~", c):
		default:
			return false
		}
	}
	return true
}

func indexByte(s string, c byte) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return true
		}
	}
	return false
}

// startAt reports whether start_sec plausibly sits at off: a time within a day of now, a
// millisecond part, a single method bit and a known HTTP version.
func startAt(b []byte, off int, now int64) bool {
	if off < 0 || off+32 > len(b) {
		return false
	}
	sec := int64(u64(b, off))
	if sec < now-86400 || sec > now+86400 {
		return false
	}
	return u64(b, off+SToMsec) < 1000 && validMethodBit(u64(b, off+SToMethod)) &&
		validVersion(u64(b, off+SToHTTPVersion))
}

// Analyze finds the layout in one sample.
func Analyze(s Sample) (Layout, error) {
	b := s.Snap
	if len(b) < 1536 {
		return Layout{}, ErrShort
	}
	if binary.LittleEndian.Uint32(b) != Signature {
		return Layout{}, ErrSignature
	}
	// headers_out: its headers list (nalloc 20) followed by its trailers list (nalloc 4) on
	// the same pool. ngx_http_alloc_request initialises both for every request, even a 400.
	var l Layout
	var pool uint64
	found := 0
	for off := 128; off+2*listSize+8 <= len(b) && off < 1400; off += 8 {
		p1, ok1 := list(b, off, 20)
		if !ok1 {
			continue
		}
		p2, ok2 := list(b, off+listSize, 4)
		if !ok2 || p1 != p2 || u64(b, off+listSize+32) != u64(b, off+32) {
			continue
		}
		if !validStatus(u64(b, off+HOToStatus)) {
			continue
		}
		found++
		l.HeadersOut, pool = off, p1
	}
	switch {
	case found == 0:
		return Layout{}, ErrNoHeaders
	case found > 1:
		return Layout{}, ErrAmbiguous
	}

	// start_sec at one of the known distances, and only one.
	nStart := 0
	for _, d := range StartDistances {
		if startAt(b, l.HeadersOut+d, s.NowSec) {
			l.Start = l.HeadersOut + d
			nStart++
		}
	}
	if nStart != 1 {
		return Layout{}, ErrNoStart
	}
	if s.BPFStart != 0 && s.BPFStart != l.Start {
		return Layout{}, ErrStartBPF
	}

	// upstream_states: r->pool follows it. The array, when present, lives on the same pool.
	nU := 0
	for i, u := range UpstreamCandidates {
		if u64(b, u+8) != pool {
			continue
		}
		if ptr := u64(b, u); ptr != 0 {
			ua := s.Upstream[i]
			if ua.Ptr != ptr || ua.Pool != pool || ua.Nelts == 0 || ua.Size < 16 {
				continue
			}
		}
		l.UpstreamStates = u
		nU++
	}
	if nU != 1 {
		return Layout{}, ErrNoUpstream
	}
	// headers_in.headers follows pool and header_in; all zero when the request line was bad.
	if hin := l.UpstreamStates + 24; u64(b, hin+48) != 0 {
		if p, ok := list(b, hin, 20); !ok || p != pool {
			return Layout{}, ErrImplausible
		}
	}
	if u64(b, ConnOffset) == 0 {
		return Layout{}, ErrImplausible
	}
	// The method name the BPF program read must match the method bit (any token for
	// NGX_HTTP_UNKNOWN), when it read one at this start_sec.
	if s.BPFStart == l.Start && s.MethodName != "" {
		mb := u64(b, l.Start+SToMethod)
		if want := MethodForBit(mb); want != "" && want != s.MethodName || !ValidToken(s.MethodName) {
			return Layout{}, ErrImplausible
		}
	}
	return l, nil
}

// MainIsR reports whether r->main, at l.Start+SToMain, points back at r in this sample (true
// for every client request if that field is where this layout says).
func MainIsR(s Sample, l Layout) bool {
	off := l.Start + SToMain
	return s.Addr != 0 && off+8 <= len(s.Snap) && u64(s.Snap, off) == s.Addr
}

// Learner accumulates samples until enough agree on one layout.
type Learner struct {
	need, max int
	counts    map[Layout]int
	seen      int
	rejected  map[error]int
	failed    error
	learnt    *Layout
	// server_name offset votes (ServerName), 0 for samples that gave none.
	snVotes map[int]int
}

// NewLearner returns a learner that accepts a layout once need samples agree on it and at
// least 80% of the usable samples do, and gives up after max samples without one.
func NewLearner(need, max int) *Learner {
	if need < 1 {
		need = 1
	}
	if max < need {
		max = need
	}
	return &Learner{need: need, max: max, counts: map[Layout]int{}, rejected: map[error]int{}, snVotes: map[int]int{}}
}

// Add feeds one sample. It returns the layout once learnt (and from then on), or an error
// once learning has failed (and from then on).
func (l *Learner) Add(s Sample) (*Layout, error) {
	if l.learnt != nil || l.failed != nil {
		return l.learnt, l.failed
	}
	l.seen++
	if off, err := ServerName(s); err != nil {
		l.snVotes[0]++
	} else {
		l.snVotes[off]++
	}
	if lay, err := Analyze(s); err != nil {
		l.rejected[err]++
	} else {
		l.counts[lay]++
	}
	var best Layout
	bestN, total := 0, 0
	for lay, n := range l.counts {
		total += n
		if n > bestN || n == bestN && lay.HeadersOut < best.HeadersOut {
			best, bestN = lay, n
		}
	}
	if bestN >= l.need && bestN*5 >= total*4 {
		l.learnt = &best
		return l.learnt, nil
	}
	if l.seen >= l.max {
		l.failed = fmt.Errorf("no nginx request layout after %d requests: %s", l.seen, l.summary())
	}
	return nil, l.failed
}

// ServerName is the learnt offset of server_name in ngx_http_core_srv_conf_t, or 0 when the
// samples did not establish it (then the agent reports no host for requests without Host).
// It needs 3 samples and an 80% majority of all samples, independently of the layout, so a
// surprise in the server configuration only disables the fallback.
func (l *Learner) ServerName() int {
	best, bestN, total := 0, 0, 0
	for off, n := range l.snVotes {
		total += n
		if off != 0 && n > bestN {
			best, bestN = off, n
		}
	}
	if bestN >= 3 && bestN*5 >= total*4 {
		return best
	}
	return 0
}

// Seen is the number of samples fed.
func (l *Learner) Seen() int { return l.seen }

func (l *Learner) summary() string {
	s := fmt.Sprintf("%d candidate layouts", len(l.counts))
	for err, n := range l.rejected {
		s += fmt.Sprintf("; %d: %v", n, err)
	}
	return s
}
