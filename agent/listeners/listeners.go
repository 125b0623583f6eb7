// Package listeners names the listening sockets of a gateway, so that each request is
// attributed to the listener that accepted it: Kong's nginx workers serve the proxy, the
// Admin API, the Status API (where the kubelet's probes go) and Kong's worker events (a
// unix socket) at once, and only the proxy's requests are the gateway's traffic.
//
// The names come, in this order, from an explicit override (KONG_WATCHER_LISTENERS, or the
// pod annotation kong-watcher.io/listeners that the webhook renders into it), from Kong's
// own configuration (KONG_PROXY_LISTEN, KONG_ADMIN_LISTEN and KONG_STATUS_LISTEN in the
// environment of the gateway's master, Kong's defaults for those absent), or, for a gateway
// that is not Kong, the rule that every TCP listener is the proxy. A port no name covers is
// named by its number ("9000"); a unix-domain listener is always "unix" and never the proxy.
package listeners

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

// The names this package gives.
const (
	Proxy   = model.ListenerProxy
	Admin   = "admin"
	Status  = "status"
	Unix    = model.ListenerUnix
	Unknown = model.ListenerUnknown
	// Other is the name reporters fold listeners beyond their bound into.
	Other = "other"
)

// Where a Set's names come from (Set.Source).
const (
	SourceOverride     = "override"      // KONG_WATCHER_LISTENERS
	SourceKong         = "kong"          // Kong's KONG_*_LISTEN settings
	SourceKongDefaults = "kong-defaults" // Kong, none of the settings in its environment
	SourceNginx        = "nginx"         // not Kong: every TCP listener is the proxy
)

// Set names one gateway's listeners. The zero value (and Nginx) names every TCP listener,
// and any the data path could not tell, the proxy. A Set is immutable once built and safe
// for concurrent use.
type Set struct {
	// Source says where the names come from (SourceOverride, ...).
	Source string
	// byPort is nil when every TCP port is the proxy.
	byPort map[uint16]string
	// numbers caches the names of ports byPort does not cover: naming a request allocates
	// nothing once its port has been seen.
	numbers *sync.Map
}

// Nginx is the Set of a gateway that is not Kong and has no override.
var Nginx = Set{Source: SourceNginx}

func newSet(source string, byPort map[uint16]string) Set {
	return Set{Source: source, byPort: byPort, numbers: &sync.Map{}}
}

// Name names the listener of a request whose listener the data path saw as port, unix and
// known (model.Request's LocalPort, UnixListener and ListenerKnown). A listener the data
// path could not tell is Unknown, except on a gateway whose listeners are all the proxy.
func (s Set) Name(port uint16, unix, known bool) string {
	switch {
	case s.byPort == nil && !unix:
		return Proxy
	case !known:
		return Unknown
	case unix:
		return Unix
	}
	if n, ok := s.byPort[port]; ok {
		return n
	}
	if n, ok := s.numbers.Load(port); ok {
		return n.(string)
	}
	n := strconv.Itoa(int(port))
	s.numbers.Store(port, n)
	return n
}

// Ports returns the named ports by name, each list ascending (nil for Nginx).
func (s Set) Ports() map[string][]uint16 {
	if s.byPort == nil {
		return nil
	}
	out := map[string][]uint16{}
	for p, n := range s.byPort {
		out[n] = append(out[n], p)
	}
	for _, ps := range out {
		slices.Sort(ps)
	}
	return out
}

// String renders the names in the override's syntax, the proxy first, then by name, ports
// ascending ("proxy=8000,8443;admin=8001,8444;status=8100"); "" for Nginx. ParseOverride
// reads it back into the same names.
func (s Set) String() string {
	byName := s.Ports()
	names := make([]string, 0, len(byName))
	for n := range byName {
		if n != Proxy {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	if _, ok := byName[Proxy]; ok {
		names = append([]string{Proxy}, names...)
	}
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(n)
		b.WriteByte('=')
		for j, p := range byName[n] {
			if j > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(int(p)))
		}
	}
	return b.String()
}

// Bounds of an override.
const (
	MaxOverrideLen  = 1024
	MaxOverridePort = 64 // ports in all groups together
	maxNameLen      = 32
)

// reserved names: given by the agent itself, or the reporters' fold.
var reserved = []string{Unix, Unknown, Other}

// ParseOverride parses KONG_WATCHER_LISTENERS (and the kong-watcher.io/listeners annotation):
// groups "name=port,port,..." separated by ";", e.g. "proxy=8000,8443;admin=8001,8444;status=8100".
// A name is a lower-case letter followed by at most 31 lower-case letters, digits, '-' or
// '_', and not "unix", "unknown" or "other"; each name has one group and each port (1 to
// 65535) one name; a proxy group is required, since only its ports make the headline
// numbers. Spaces around names, ports and separators are ignored. Ports no group names are
// named by their number.
func ParseOverride(v string) (Set, error) {
	if len(v) > MaxOverrideLen {
		return Set{}, fmt.Errorf("%d bytes, more than %d", len(v), MaxOverrideLen)
	}
	if strings.TrimSpace(v) == "" {
		return Set{}, errors.New("empty: want name=port,port;... such as proxy=8000,8443;admin=8001")
	}
	byPort := map[uint16]string{}
	seen := map[string]bool{}
	for _, group := range strings.Split(v, ";") {
		name, ports, ok := strings.Cut(group, "=")
		name = strings.TrimSpace(name)
		if !ok {
			return Set{}, fmt.Errorf("group %q: want name=port,port,...", quoteShort(group))
		}
		if err := checkName(name); err != nil {
			return Set{}, err
		}
		if seen[name] {
			return Set{}, fmt.Errorf("name %q has two groups", name)
		}
		seen[name] = true
		for _, f := range strings.Split(ports, ",") {
			p, err := parsePort(strings.TrimSpace(f))
			if err != nil {
				return Set{}, fmt.Errorf("%s: %w", name, err)
			}
			if other, dup := byPort[p]; dup {
				return Set{}, fmt.Errorf("port %d named both %s and %s", p, other, name)
			}
			byPort[p] = name
			if len(byPort) > MaxOverridePort {
				return Set{}, fmt.Errorf("more than %d ports", MaxOverridePort)
			}
		}
	}
	if !seen[Proxy] {
		return Set{}, errors.New("no proxy group: only the proxy's ports make the headline numbers")
	}
	return newSet(SourceOverride, byPort), nil
}

func checkName(name string) error {
	if name == "" || len(name) > maxNameLen {
		return fmt.Errorf("name %q: want 1 to %d characters", quoteShort(name), maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '_'):
		default:
			return fmt.Errorf("name %q: want a lower-case letter, then lower-case letters, digits, '-' or '_'", quoteShort(name))
		}
	}
	if slices.Contains(reserved, name) {
		return fmt.Errorf("name %q is the agent's own", name)
	}
	return nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %q: want 1 to 65535", quoteShort(s))
	}
	return uint16(n), nil
}

// quoteShort keeps error messages short when they quote a user's value.
func quoteShort(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
