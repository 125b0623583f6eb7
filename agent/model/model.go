// Package model holds the HTTP model of the agent's pipeline: one Request is one client
// request paired with its response, whichever data path (nginx's request object or the wire)
// produced it. Decoders produce Requests; the aggregator and the per-request logger consume
// them. Its one dependency, agent/pathnorm (the route key), has none, so every stage can be
// tested alone.
package model

import (
	"time"

	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
)

// LuaPhase indexes Request.LuaPhases: the nginx phases in which the lua module runs code
// (Kong runs its plugins in all but content, which serves its Admin and Status APIs).
type LuaPhase int

const (
	LuaRewrite LuaPhase = iota
	LuaAccess
	LuaContent
	LuaHeaderFilter
	LuaBodyFilter
	LuaLog
	LuaBalancer
	NumLuaPhases
)

// LuaPhaseNames are the names used in Stats JSON and metric labels (Kong's own names for
// its plugin phases).
var LuaPhaseNames = [NumLuaPhases]string{"rewrite", "access", "content", "header_filter", "body_filter", "log", "balancer"}

// The longest Host and URI a data path keeps. Both data paths cut at the same lengths (the
// request-object path's BPF record has buffers of exactly these sizes) and mark the cut, so a
// long value reads the same whichever path saw it and is never mistaken for a shorter real one.
const (
	MaxHostLen = 64
	MaxURILen  = 160
)

// Cut returns s cut to max bytes and whether it was cut.
func Cut(s string, max int) (string, bool) {
	if len(s) <= max {
		return s, false
	}
	return s[:max], true
}

// Request is one HTTP request and its response.
type Request struct {
	// Start is when nginx started reading the request; End when the agent saw it finish.
	Start time.Time
	End   time.Time
	// Method as sent ("GET", "PURGE", ...); the aggregator folds unknown ones into OTHER.
	Method string
	// Host is nginx's $host: the Host header / :authority without port, lower-cased.
	Host string
	// URI is what the client sent ($request_uri), query string included; the aggregator
	// normalises it and drops the query, the logger masks it.
	URI string
	// HostTruncated and URITruncated say that Host or URI hold only the first MaxHostLen or
	// MaxURILen bytes of what the client sent.
	HostTruncated bool
	URITruncated  bool
	// Proto is "HTTP/1.0", "HTTP/1.1", "HTTP/2.0", ... ("" if unknown).
	Proto string
	// Status is the response status; 0 means no valid response was sent.
	Status int
	// Latency is $request_time: End - Start at nginx's millisecond precision.
	Latency time.Duration
	// Upstream is $upstream_response_time summed over tries; valid only if HasUpstream.
	Upstream    time.Duration
	HasUpstream bool
	// BytesSent is $bytes_sent (0 if unknown).
	BytesSent uint64
	// ClientAddr is $remote_addr ("" if unknown).
	ClientAddr string
	// LuaPhases holds the time spent in each Lua phase handler for this request (0: the
	// phase's handler did not run); valid only if HasLua (Lua timing may be sampled, see docs/design.md).
	LuaPhases [NumLuaPhases]time.Duration
	HasLua    bool
	// PID is the worker process that served it (as seen from the agent's PID namespace).
	PID int
	// The listening socket that accepted the request's connection, as the data path saw it:
	// ListenerKnown says it did; then UnixListener says it is a unix-domain socket, else
	// LocalPort is its TCP port.
	LocalPort     uint16
	UnixListener  bool
	ListenerKnown bool
	// Listener is that listener's name (ListenerProxy, "admin", "status", ListenerUnix, a
	// port number, ...), given by the agent from the gateway's configuration before the
	// request reaches the aggregator and the metrics; "" counts as ListenerProxy.
	Listener string
	// Route is URI's route key (pathnorm.AppendCut), computed once by the agent for every
	// reporter that keys on it; valid only while the request is being observed. nil: not
	// computed, a reporter computes it itself.
	Route []byte
}

// AppendRoute appends the request's route key to dst: Route when the agent computed it,
// else URI's, computed here.
func (r *Request) AppendRoute(dst []byte) []byte {
	if r.Route != nil {
		return append(dst, r.Route...)
	}
	return pathnorm.AppendCut(dst, r.URI, r.URITruncated)
}

// Listener names every data path and reporter shares.
const (
	// ListenerProxy is the gateway's proxy traffic: the headline numbers count only it.
	ListenerProxy = "proxy"
	// ListenerUnix is any unix-domain listener (Kong's worker events): never proxy traffic.
	ListenerUnix = "unix"
	// ListenerUnknown is a request whose listener the data path could not read.
	ListenerUnknown = "unknown"
)

// IsProxy reports whether r counts in the headline numbers.
func (r *Request) IsProxy() bool { return r.Listener == "" || r.Listener == ListenerProxy }

// KongLatency is the time Kong itself spent: total minus upstream for proxied requests.
func (r *Request) KongLatency() time.Duration {
	if !r.HasUpstream {
		return r.Latency
	}
	if d := r.Latency - r.Upstream; d > 0 {
		return d
	}
	return 0
}

// Sink consumes Requests. Implementations must not block the caller for long: the caller is
// the event reader, and a stalled reader makes the kernel drop events.
type Sink interface {
	Observe(r *Request)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(r *Request)

func (f SinkFunc) Observe(r *Request) { f(r) }
