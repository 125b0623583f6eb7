package listeners

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// kongSettings are Kong's HTTP listener settings, as its master's environment carries them,
// with Kong 3.x's defaults (kong/templates/kong_defaults.lua of Kong 3.8) for a Kong whose
// environment does not set them. Their order decides a port listed by two of them.
var kongSettings = []struct{ name, env, def string }{
	{Proxy, "KONG_PROXY_LISTEN", "0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384"},
	{Admin, "KONG_ADMIN_LISTEN", "127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl reuseport backlog=16384"},
	{Status, "KONG_STATUS_LISTEN", "127.0.0.1:8007 reuseport backlog=16384"},
}

// Listen is one address of a Kong listen setting: a TCP port, or a unix socket's path.
type Listen struct {
	Port uint16
	Unix string
}

// ParseKongListen parses the value of one of Kong's *_listen settings: "off", or entries
// separated by commas, each an address followed by flags separated by spaces:
// "0.0.0.0:8000 reuseport backlog=16384, [::]:8443 http2 ssl proxy_protocol",
// "unix:/kong/sock". An address is host:port, [IPv6]:port or unix:path; flags (ssl, http2,
// reuseport, backlog=N, proxy_protocol, deferred, bind, ipv6only=on, so_keepalive=...) say
// nothing about which listener a port is, and any is accepted.
func ParseKongListen(v string) ([]Listen, error) {
	var out []Listen
	for _, entry := range strings.Split(v, ",") {
		fields := strings.Fields(entry)
		if len(fields) == 0 {
			return nil, fmt.Errorf("%q: an empty entry", quoteShort(v))
		}
		addr := fields[0]
		if addr == "off" {
			if len(fields) > 1 {
				return nil, fmt.Errorf("%q: flags after off", quoteShort(entry))
			}
			continue
		}
		if path, ok := strings.CutPrefix(addr, "unix:"); ok {
			if path == "" {
				return nil, fmt.Errorf("%q: a unix socket without a path", quoteShort(entry))
			}
			out = append(out, Listen{Unix: path})
			continue
		}
		i := strings.LastIndexByte(addr, ':')
		if i <= 0 {
			return nil, fmt.Errorf("%q: want host:port, [IPv6]:port or unix:path", quoteShort(addr))
		}
		host := addr[:i]
		if strings.HasPrefix(host, "[") != strings.HasSuffix(host, "]") ||
			!strings.HasPrefix(host, "[") && strings.ContainsAny(host, ":[]") || host == "[]" {
			return nil, fmt.Errorf("%q: want host:port, [IPv6]:port or unix:path", quoteShort(addr))
		}
		p, err := parsePort(addr[i+1:])
		if err != nil {
			return nil, fmt.Errorf("%q: %w", quoteShort(addr), err)
		}
		out = append(out, Listen{Port: p})
	}
	return out, nil
}

// FromKong names the listeners as a Kong whose master has env (its environment) serves
// them: the ports of KONG_PROXY_LISTEN, KONG_ADMIN_LISTEN and KONG_STATUS_LISTEN, each
// setting that env lacks taking Kong's default. A setting that does not parse (Kong would
// not have started with it) takes its default too, and a port two settings list keeps the
// first name (proxy, admin, status); both are returned as errors, to be logged.
func FromKong(env map[string]string) (Set, []error) {
	byPort := map[uint16]string{}
	source := SourceKongDefaults
	var errs []error
	for _, s := range kongSettings {
		v, ok := env[s.env]
		if ok {
			source = SourceKong
		} else {
			v = s.def
		}
		ls, err := ParseKongListen(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w; Kong's default %q used", s.env, err, s.def))
			ls, _ = ParseKongListen(s.def)
		}
		for _, l := range ls {
			if l.Unix != "" {
				continue // unix-domain listeners are all Unix
			}
			if other, dup := byPort[l.Port]; dup && other != s.name {
				errs = append(errs, fmt.Errorf("%s: port %d is %s's already", s.env, l.Port, other))
				continue
			}
			byPort[l.Port] = s.name
		}
	}
	return newSet(source, byPort), errs
}

// IsKong tells Kong's nginx master from any other nginx, by what Kong leaves on it: a KONG_
// setting in its environment (Kong reads its configuration from there, and its container
// image's entrypoint always sets KONG_NGINX_DAEMON), or Kong's nginx prefix (-p) in its
// command line, a directory named after Kong (/usr/local/kong by default, /kong_prefix in
// Kong's Helm chart). The agent's own settings (KONG_WATCHER_*, KONG_PROCESS_NAME) do not
// count: a test or a shell may pass them on to an nginx that is not Kong.
func IsKong(env map[string]string, title string) bool {
	for k := range env {
		if strings.HasPrefix(k, "KONG_") && !strings.HasPrefix(k, "KONG_WATCHER_") && k != "KONG_PROCESS_NAME" {
			return true
		}
	}
	prefix := nginxPrefix(title)
	for _, e := range strings.Split(prefix, "/") {
		if strings.Contains(strings.ToLower(e), "kong") {
			return true
		}
	}
	return false
}

// nginxPrefix is the -p argument of an nginx master's title ("nginx: master process
// /usr/local/openresty/nginx/sbin/nginx -p /usr/local/kong -c nginx.conf"), "" if none.
func nginxPrefix(title string) string {
	fields := strings.Fields(title)
	for i, f := range fields {
		switch {
		case f == "-p" && i+1 < len(fields):
			return fields[i+1]
		case strings.HasPrefix(f, "-p") && len(f) > 2:
			return f[2:]
		}
	}
	return ""
}

// ParseEnviron splits a /proc/<pid>/environ (NUL-terminated KEY=value entries).
func ParseEnviron(b []byte) map[string]string {
	env := map[string]string{}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if k, v, ok := bytes.Cut(kv, []byte{'='}); ok && len(k) > 0 {
			env[string(k)] = string(v)
		}
	}
	return env
}

// maxEnviron bounds what is read of a master's environment (the kernel allows far more, and
// Kong's settings are among the first few KiB).
const maxEnviron = 1 << 20

// Learn names the listeners of the gateway whose master is pid (under procRoot) with the
// process title title: Kong's names when the master is Kong's (see IsKong, FromKong), every
// TCP listener the proxy otherwise. The environment is read from the master's memory
// (KongEnviron), or from /proc/<pid>/environ where that fails (a process that did not write
// over it); when neither can be read, the title alone tells Kong, which then gets Kong's
// defaults. errs say what could not be read or parsed, to be logged.
func Learn(procRoot string, pid int, title string) (Set, []error) {
	var errs []error
	env, err := KongEnviron(procRoot, pid)
	if err != nil {
		b, ferr := readLimited(filepath.Join(procRoot, strconv.Itoa(pid), "environ"), maxEnviron)
		if ferr != nil {
			errs = append(errs, fmt.Errorf("the gateway master's environment: %w", errors.Join(err, ferr)))
		}
		env = ParseEnviron(b)
	}
	if !IsKong(env, title) {
		return Nginx, errs
	}
	s, perrs := FromKong(env)
	return s, append(errs, perrs...)
}

func readLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}
