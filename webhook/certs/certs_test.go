package certs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
)

func TestSyncerWrite(t *testing.T) {
	dir := t.TempDir()
	s := &syncer{o: Options{CertDir: dir, CertName: "tls.crt", KeyName: "tls.key"}, log: logr.Discard()}

	// An empty Secret (before the rotator filled it) writes nothing.
	if err := s.write(&corev1.Secret{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "tls.crt")); !os.IsNotExist(err) {
		t.Fatalf("cert written from an empty secret (err %v)", err)
	}

	sec := &corev1.Secret{Data: map[string][]byte{"tls.crt": []byte("CERT1"), "tls.key": []byte("KEY1")}}
	if err := s.write(sec); err != nil {
		t.Fatal(err)
	}
	check := func(name, want string) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q (err %v), want %q", name, b, err, want)
		}
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	check("tls.crt", "CERT1")
	check("tls.key", "KEY1")

	// Rotation replaces both; no temp files are left behind.
	sec.Data["tls.crt"], sec.Data["tls.key"] = []byte("CERT2"), []byte("KEY2")
	if err := s.write(sec); err != nil {
		t.Fatal(err)
	}
	check("tls.crt", "CERT2")
	check("tls.key", "KEY2")
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("cert dir has %d entries, want 2 (leftover temp files?)", len(entries))
	}
}
