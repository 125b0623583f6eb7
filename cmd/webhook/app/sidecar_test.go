package app

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-logr/logr/testr"
	"k8s.io/client-go/rest"
)

func TestNativeSidecars(t *testing.T) {
	for _, c := range []struct {
		version string
		want    bool
	}{
		{"v1.29.0", true},
		{"v1.37.2", true},
		{"v1.30.4-eks-a737599", true},
		{"v1.29.1-gke.1589017", true},
		{"v1.28.15", false},
		{"v1.28.3-gke.100", false},
		{"v1.27.0+k3s1", false},
		{"v2.0.0", true},
	} {
		got, err := nativeSidecars(c.version)
		if err != nil || got != c.want {
			t.Errorf("nativeSidecars(%q) = %v, %v; want %v", c.version, got, err, c.want)
		}
	}
	if _, err := nativeSidecars("not a version"); err == nil {
		t.Error("nativeSidecars accepted a version without numbers")
	}
}

// TestFitSidecarMode asks a stand-in API server's /version, as the webhook does at start.
func TestFitSidecarMode(t *testing.T) {
	for _, c := range []struct {
		name, body string
		status     int
		want       bool
	}{
		{"1.30 keeps native sidecars", `{"major":"1","minor":"30","gitVersion":"v1.30.4"}`, 200, true},
		{"1.28 gets plain containers", `{"major":"1","minor":"28","gitVersion":"v1.28.15"}`, 200, false},
		{"an unreadable version gets plain containers", `oops`, 500, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/version" {
					http.NotFound(w, r)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(c.status)
				w.Write([]byte(c.body))
			}))
			defer srv.Close()
			o := NewOptions()
			o.Agent.NativeSidecar = true
			fitSidecarMode(&rest.Config{Host: srv.URL}, o, testr.New(t))
			if o.Agent.NativeSidecar != c.want {
				t.Errorf("native sidecar %v, want %v", o.Agent.NativeSidecar, c.want)
			}
		})
	}
}
