package listeners

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestParseKongListen(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []Listen
	}{
		{"0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384", []Listen{{Port: 8000}, {Port: 8443}}},
		{"127.0.0.1:8001", []Listen{{Port: 8001}}},
		{"  0.0.0.0:8100  ", []Listen{{Port: 8100}}},
		{"[::]:8000 proxy_protocol, [::1]:8443 ssl http2 deferred bind ipv6only=on so_keepalive=on", []Listen{{Port: 8000}, {Port: 8443}}},
		{"[2001:db8::1]:9000 ssl", []Listen{{Port: 9000}}},
		{"localhost:8001 reuseport", []Listen{{Port: 8001}}},
		{"off", nil},
		{"0.0.0.0:8000, off", []Listen{{Port: 8000}}},
		{"unix:/usr/local/kong/sockets/we", []Listen{{Unix: "/usr/local/kong/sockets/we"}}},
		{"unix:/tmp/a.sock, 0.0.0.0:8002 ssl", []Listen{{Unix: "/tmp/a.sock"}, {Port: 8002}}},
	} {
		got, err := ParseKongListen(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseKongListen(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{
		"", " ", "0.0.0.0:8000,", ",0.0.0.0:8000", "8000", ":8000", "0.0.0.0:", "0.0.0.0:0",
		"0.0.0.0:65536", "0.0.0.0:80a", "0.0.0.0:-1", "::1:8000", "[::1:8000", "::1]:8000", "[]:8000",
		"unix:", "off ssl", "0.0.0.0:+80",
	} {
		if got, err := ParseKongListen(bad); err == nil {
			t.Errorf("ParseKongListen(%q) = %v, want an error", bad, got)
		}
	}
}

func TestFromKong(t *testing.T) {
	s, errs := FromKong(map[string]string{
		"KONG_PROXY_LISTEN":  "0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384",
		"KONG_ADMIN_LISTEN":  "127.0.0.1:8444 http2 ssl",
		"KONG_STATUS_LISTEN": "0.0.0.0:8100",
	})
	if len(errs) > 0 || s.Source != SourceKong {
		t.Fatalf("source %q, errors %v", s.Source, errs)
	}
	if got := s.String(); got != "proxy=8000,8443;admin=8444;status=8100" {
		t.Errorf("names %q", got)
	}
	for port, want := range map[uint16]string{8000: Proxy, 8443: Proxy, 8444: Admin, 8100: Status, 8001: "8001", 9000: "9000"} {
		if got := s.Name(port, false, true); got != want {
			t.Errorf("port %d: %q, want %q", port, got, want)
		}
	}

	// Absent settings take Kong's defaults; "off" is no listener; a unix socket is Unix.
	s, errs = FromKong(map[string]string{"KONG_ADMIN_LISTEN": "off", "KONG_STATUS_LISTEN": "unix:/kong/status.sock"})
	if len(errs) > 0 || s.String() != "proxy=8000,8443" || s.Source != SourceKong {
		t.Errorf("admin off, status on a unix socket: %q (%s), %v", s, s.Source, errs)
	}
	s, errs = FromKong(nil)
	if len(errs) > 0 || s.String() != "proxy=8000,8443;admin=8001,8444;status=8007" || s.Source != SourceKongDefaults {
		t.Errorf("Kong's defaults: %q (%s), %v", s, s.Source, errs)
	}

	// A setting Kong could not have started with takes the default, and says so; a port two
	// settings list is the first's.
	s, errs = FromKong(map[string]string{"KONG_ADMIN_LISTEN": "8001", "KONG_STATUS_LISTEN": "10.0.0.1:8000"})
	if len(errs) != 2 || s.String() != "proxy=8000,8443;admin=8001,8444" {
		t.Errorf("broken settings: %q, %v", s, errs)
	}
}

func TestNameRules(t *testing.T) {
	kong, _ := FromKong(nil)
	override, _ := ParseOverride("proxy=8000")
	for _, s := range []Set{Nginx, {}, kong, override} {
		if got := s.Name(8000, true, true); got != Unix {
			t.Errorf("%s: a unix-domain listener is %q", s.Source, got)
		}
	}
	for _, s := range []Set{kong, override} {
		if got := s.Name(8000, false, false); got != Unknown {
			t.Errorf("%s: an unknown listener is %q", s.Source, got)
		}
	}
	for _, s := range []Set{Nginx, {}} {
		if got := s.Name(9000, false, true); got != Proxy {
			t.Errorf("not Kong: every TCP port is the proxy, 9000 is %q", got)
		}
		if got := s.Name(0, false, false); got != Proxy {
			t.Errorf("not Kong: an unknown listener is the proxy, not %q", got)
		}
	}
	if kong.Name(9000, false, true) != "9000" || kong.Name(9000, false, true) != "9000" {
		t.Error("an unnamed port is its number")
	}
	if n := testing.AllocsPerRun(100, func() { kong.Name(9000, false, true) }); n != 0 {
		t.Errorf("naming an unnamed port allocates %v times once seen", n)
	}
}

func TestIsKong(t *testing.T) {
	for _, c := range []struct {
		env   map[string]string
		title string
		want  bool
	}{
		{map[string]string{"KONG_NGINX_DAEMON": "off"}, "nginx: master process /usr/local/openresty/nginx/sbin/nginx -p /tmp/x -c nginx.conf", true},
		{map[string]string{"KONG_PROXY_LISTEN": "0.0.0.0:8000"}, "", true},
		{nil, "nginx: master process /usr/local/openresty/nginx/sbin/nginx -p /usr/local/kong -c nginx.conf", true},
		{nil, "nginx: master process nginx -p /kong_prefix/ -c nginx.conf", true},
		{nil, "nginx: master process nginx -p/usr/local/kong/ -c nginx.conf", true},
		{nil, "nginx: master process /usr/sbin/nginx -g daemon off;", false},
		{nil, "nginx: master process nginx -p /tmp/kw-gateway-1234/ -c /tmp/kw-gateway-1234/nginx.conf", false},
		{map[string]string{"KONG_WATCHER_LISTENERS": "proxy=80", "KONG_PROCESS_NAME": "nginx", "PATH": "/bin"}, "nginx: master process nginx", false},
		{nil, "nginx: master process /opt/kong/nginx -c /etc/nginx.conf", false}, // no -p: a binary's directory says nothing
	} {
		if got := IsKong(c.env, c.title); got != c.want {
			t.Errorf("IsKong(%v, %q) = %v, want %v", c.env, c.title, got, c.want)
		}
	}
}

func TestParseEnviron(t *testing.T) {
	env := ParseEnviron([]byte("A=1\x00KONG_PROXY_LISTEN=0.0.0.0:8000, 0.0.0.0:8443 ssl\x00EMPTY=\x00=x\x00NOEQ\x00B=a=b\x00"))
	want := map[string]string{"A": "1", "KONG_PROXY_LISTEN": "0.0.0.0:8000, 0.0.0.0:8443 ssl", "EMPTY": "", "B": "a=b"}
	if !reflect.DeepEqual(env, want) {
		t.Errorf("ParseEnviron = %v, want %v", env, want)
	}
}

// Learn reads a fake /proc: Kong by its environment, by its prefix when the environment is
// unreadable, and a plain nginx.
func TestLearn(t *testing.T) {
	root := t.TempDir()
	write := func(pid int, environ string) {
		d := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "environ"), []byte(environ), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(10, "HOME=/\x00KONG_PROXY_LISTEN=0.0.0.0:8000\x00KONG_STATUS_LISTEN=0.0.0.0:8100\x00")
	write(20, "HOME=/\x00")
	s, errs := Learn(root, 10, "nginx: master process nginx -p /usr/local/kong/")
	if len(errs) > 0 || s.String() != "proxy=8000;admin=8001,8444;status=8100" {
		t.Errorf("Kong: %q %v", s, errs)
	}
	s, errs = Learn(root, 20, "nginx: master process /usr/sbin/nginx")
	if len(errs) > 0 || s.Source != SourceNginx {
		t.Errorf("nginx: %q (%s) %v", s, s.Source, errs)
	}
	s, errs = Learn(root, 30, "nginx: master process nginx -p /usr/local/kong/")
	if len(errs) != 1 || s.Source != SourceKongDefaults {
		t.Errorf("Kong, environment unreadable: %q (%s) %v", s, s.Source, errs)
	}
}

func TestParseOverride(t *testing.T) {
	for in, want := range map[string]string{
		"proxy=8000,8443;admin=8001,8444;status=8100":       "proxy=8000,8443;admin=8001,8444;status=8100",
		" status = 8100 ; proxy = 8443 , 8000 ; admin=8001": "proxy=8000,8443;admin=8001;status=8100",
		"proxy=80":                                     "proxy=80",
		"proxy=8000;kong-manager=8002;x_1=9":           "proxy=8000;kong-manager=8002;x_1=9",
		"admin=1;proxy=65535;cluster=8005":             "proxy=65535;admin=1;cluster=8005",
		"proxy=0080":                                   "proxy=80",
		"proxy=8000;a234567890123456789012345678901=1": "proxy=8000;a234567890123456789012345678901=1",
	} {
		s, err := ParseOverride(in)
		if err != nil || s.String() != want || s.Source != SourceOverride {
			t.Errorf("ParseOverride(%q) = %q (%s), %v; want %q", in, s, s.Source, err, want)
		}
	}
	s, _ := ParseOverride("proxy=8000,8443;admin=8001")
	for port, want := range map[uint16]string{8000: Proxy, 8443: Proxy, 8001: Admin, 8100: "8100"} {
		if got := s.Name(port, false, true); got != want {
			t.Errorf("port %d: %q, want %q", port, got, want)
		}
	}
	for in, why := range map[string]string{
		"":                       "empty",
		"   ":                    "empty",
		"admin=8001":             "no proxy group",
		"proxy":                  "want name=port",
		"proxy=":                 "port",
		"proxy=8000,":            "port",
		"proxy=8000;":            "want name=port",
		";proxy=8000":            "want name=port",
		"proxy=8000;;admin=8001": "want name=port",
		"proxy=0":                "port",
		"proxy=65536":            "port",
		"proxy=-1":               "port",
		"proxy=+80":              "port",
		"proxy=8 0":              "port",
		"proxy=8000;proxy=8443":  "two groups",
		"proxy=8000;admin=8000":  "named both",
		"proxy=8000,8000":        "named both",
		"Proxy=8000":             "lower-case",
		"proxy=8000;9000=9000":   "lower-case",
		"proxy=8000;-x=9":        "lower-case",
		"proxy=8000;a.b=9":       "lower-case",
		"proxy=8000;unix=9":      "agent's own",
		"proxy=8000;other=9":     "agent's own",
		"proxy=8000;unknown=9":   "agent's own",
		"proxy=8000;a23456789012345678901234567890123=1": "characters",
		"proxy=" + strings.Repeat("1,", 600) + "1":       "bytes",
		"proxy=" + ports(1, 65):                          "more than 64 ports",
		"proxy=8000=8001":                                "port",
	} {
		if s, err := ParseOverride(in); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseOverride(%q) = %q, %v; want an error saying %q", in, s, err, why)
		}
	}
}

func ports(from, n int) string {
	var ps []string
	for i := range n {
		ps = append(ps, strconv.Itoa(from+i))
	}
	return strings.Join(ps, ",")
}

// An accepted override renders to a canonical form that parses back to the same names, and
// names nothing it did not say.
func FuzzParseOverride(f *testing.F) {
	for _, s := range []string{
		"proxy=8000,8443;admin=8001,8444;status=8100", " proxy = 80 ", "proxy=8000;proxy=1", "admin=1",
		"proxy=8000;x-y_z=1,2,3", "proxy=65535,1", "proxy=0080;unix=1", "=;,", "proxy=8000\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseOverride(in)
		if err != nil {
			if s.byPort != nil {
				t.Fatalf("an error with names: %q", s)
			}
			return
		}
		out := s.String()
		again, err := ParseOverride(out)
		if err != nil || again.String() != out || !reflect.DeepEqual(again.Ports(), s.Ports()) {
			t.Fatalf("%q -> %q -> %q, %v", in, out, again, err)
		}
		if len(s.Ports()[Proxy]) == 0 {
			t.Fatalf("%q accepted without a proxy port", in)
		}
		for name, ps := range s.Ports() {
			if checkName(name) != nil || !strings.Contains(in, name) {
				t.Fatalf("%q: name %q", in, name)
			}
			for _, p := range ps {
				if p == 0 || s.Name(p, false, true) != name {
					t.Fatalf("%q: port %d of %s named %q", in, p, name, s.Name(p, false, true))
				}
			}
		}
	})
}

// Whatever Kong's environment holds, ParseKongListen neither panics nor returns port 0 or an
// empty path.
func FuzzParseKongListen(f *testing.F) {
	for _, s := range []string{
		"0.0.0.0:8000 reuseport backlog=16384, 0.0.0.0:8443 http2 ssl reuseport backlog=16384", "off",
		"[::]:8000", "unix:/a", "127.0.0.1:8001, off", ":", "[]:1", ",,",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ls, err := ParseKongListen(in)
		if err != nil {
			return
		}
		for _, l := range ls {
			if (l.Port == 0) == (l.Unix == "") {
				t.Fatalf("%q: %+v", in, l)
			}
		}
	})
}
