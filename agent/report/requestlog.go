package report

import (
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
)

// Masked replaces a sensitive value in logs.
const Masked = "***"

// Mask says which values the per-request log hides.
type Mask struct {
	// Query masks every query-string value (keys stay: "?token=***&page=***").
	Query bool
}

// DefaultMask masks query values: they may carry tokens and keys.
func DefaultMask() Mask { return Mask{Query: true} }

// maxLoggedURI bounds the uri field of a log line.
const maxLoggedURI = 512

// MaskQuery returns uri with every query value replaced by Masked and any fragment dropped:
// "/a?token=abc&x" -> "/a?token=***&***". A bare item (no '=') is masked whole, since it may
// itself be the secret. Keys are kept so the line stays useful.
func MaskQuery(uri string) string {
	if i := strings.IndexByte(uri, '#'); i >= 0 {
		uri = uri[:i]
	}
	q := strings.IndexByte(uri, '?')
	if q < 0 {
		return uri
	}
	var b strings.Builder
	b.Grow(len(uri) + 8)
	b.WriteString(uri[:q+1])
	for i, item := range strings.Split(uri[q+1:], "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		if item == "" {
			continue
		}
		if k, _, ok := strings.Cut(item, "="); ok {
			b.WriteString(k)
			b.WriteByte('=')
		}
		b.WriteString(Masked)
	}
	return b.String()
}

// RequestLogOptions configure a RequestLogger.
type RequestLogOptions struct {
	// Mask is what to hide; nil means DefaultMask().
	Mask *Mask
	// MaxPerSecond caps the lines per second (0: no cap). At 20k req/s one debug line per
	// request is a lot of log volume; lines over the cap are counted and reported in one
	// "request lines suppressed" line per second instead.
	MaxPerSecond int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// RequestLogger is a model.Sink that logs one line per request at debug level (logr V(1)).
// Whether debug is on is checked once, at construction: when it is off Observe returns at
// once, so leaving the logger in the pipeline costs nothing. (A level changed at run time is
// not picked up; the agent's level comes from LOG_LEVEL at start-up.)
type RequestLogger struct {
	log     logr.Logger
	enabled bool
	mask    Mask
	max     int
	now     func() time.Time

	mu         sync.Mutex
	second     int64
	inSecond   int
	suppressed uint64
}

var _ model.Sink = (*RequestLogger)(nil)

// RequestLogEnabled reports whether a RequestLogger writing to log would write anything
// (its debug level, V(1), is on): what a data path asks before reading what only the
// request log shows.
func RequestLogEnabled(log logr.Logger) bool { return log.V(1).Enabled() }

// NewRequestLogger returns a RequestLogger writing to log.V(1).
func NewRequestLogger(log logr.Logger, o RequestLogOptions) *RequestLogger {
	mask := DefaultMask()
	if o.Mask != nil {
		mask = *o.Mask
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &RequestLogger{log: log.V(1), enabled: RequestLogEnabled(log), mask: mask, max: o.MaxPerSecond, now: o.Now}
}

// Enabled reports whether the logger writes anything (debug level was on at construction).
func (l *RequestLogger) Enabled() bool { return l.enabled }

// Observe logs r (method, host, normalised path, masked uri, status, latencies, bytes,
// client address).
func (l *RequestLogger) Observe(r *model.Request) {
	if !l.enabled || !l.allow() {
		return
	}
	uri := r.URI
	if l.mask.Query {
		uri = MaskQuery(uri)
	}
	if len(uri) > maxLoggedURI {
		uri = uri[:maxLoggedURI] + "..."
	}
	kv := make([]any, 0, 24)
	kv = append(kv,
		"method", r.Method,
		"host", pathnorm.Host(r.Host, r.HostTruncated),
		"path", pathnorm.NormaliseCut(r.URI, r.URITruncated),
		"uri", uri,
		"status", r.Status,
		"latencyMs", ms(r.Latency),
	)
	if r.HasUpstream {
		kv = append(kv, "upstreamMs", ms(r.Upstream))
	}
	kv = append(kv, "bytes", r.BytesSent, "client", r.ClientAddr)
	if r.Proto != "" {
		kv = append(kv, "proto", r.Proto)
	}
	if r.Listener != "" {
		kv = append(kv, "listener", r.Listener)
	}
	l.log.Info("request", kv...)
}

// allow applies MaxPerSecond and reports suppressed lines once per second.
func (l *RequestLogger) allow() bool {
	if l.max <= 0 {
		return true
	}
	sec := l.now().Unix()
	l.mu.Lock()
	var report uint64
	if sec != l.second {
		report, l.suppressed = l.suppressed, 0
		l.second, l.inSecond = sec, 0
	}
	l.inSecond++
	ok := l.inSecond <= l.max
	if !ok {
		l.suppressed++
	}
	l.mu.Unlock()
	if report > 0 {
		l.log.Info("request lines suppressed", "count", report, "maxPerSecond", l.max)
	}
	return ok
}

// ms renders a duration as milliseconds with microsecond precision.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
