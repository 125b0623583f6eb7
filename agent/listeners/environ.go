package listeners

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
)

// Bounds of what is read of a process's environment.
const (
	maxEnvVars   = 4096
	maxEnvString = 32 << 10
)

// KongEnviron returns the KONG_ variables of process pid's environment as the process holds
// it in memory.
//
// /proc/<pid>/environ does not have them for an nginx master (or worker): to make room for
// its process title ("nginx: master process ..."), nginx copies its environment strings
// elsewhere and writes over the originals, which /proc/<pid>/environ reads
// (ngx_init_setproctitle). libc's environ lists the copies: it is found by its symbol, in the
// executable (which holds libc's variable when it was linked with a copy relocation, as
// OpenResty's nginx is) or else in libc, and read through /proc/<pid>/mem, which needs ptrace
// access to the process (CAP_SYS_PTRACE for another user's, which the agent has; Yama's
// ptrace_scope 3 refuses it to anyone, and Learn then falls back to Kong's defaults).
func KongEnviron(procRoot string, pid int) (map[string]string, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	addr, err := environAddr(dir, procRoot, pid)
	if err != nil {
		return nil, fmt.Errorf("finding environ: %w", err)
	}
	mem, err := os.Open(filepath.Join(dir, "mem"))
	if err != nil {
		return nil, err
	}
	defer mem.Close()
	word := make([]byte, 8)
	read := func(at uint64) (uint64, error) {
		if _, err := mem.ReadAt(word, int64(at)); err != nil {
			return 0, err
		}
		return binary.LittleEndian.Uint64(word), nil
	}
	envp, err := read(addr)
	if err != nil || envp == 0 {
		return nil, fmt.Errorf("reading environ at %#x: %v", addr, err)
	}
	env := map[string]string{}
	buf := make([]byte, maxEnvString)
	prefix := make([]byte, len("KONG_"))
	for i := uint64(0); i < maxEnvVars; i++ {
		p, err := read(envp + 8*i)
		if err != nil {
			return env, err
		}
		if p == 0 {
			return env, nil
		}
		if _, err := mem.ReadAt(prefix, int64(p)); err != nil || string(prefix) != "KONG_" {
			continue
		}
		// A string near the end of its mapping reads short: what was read is enough.
		n, _ := mem.ReadAt(buf, int64(p))
		s, _, _ := bytes.Cut(buf[:n], []byte{0})
		if k, v, ok := strings.Cut(string(s), "="); ok {
			env[k] = v
		}
	}
	return env, nil
}

// environAddr is the run-time address of libc's environ in process pid (whose /proc
// directory is dir): the executable's copy if it has one, libc's otherwise.
func environAddr(dir, procRoot string, pid int) (uint64, error) {
	maps, err := discovery.ReadMaps(procRoot, pid)
	if err != nil {
		return 0, err
	}
	var exe os.FileInfo
	if exe, err = os.Stat(filepath.Join(dir, "exe")); err != nil {
		return 0, err
	}
	var errs []error
	for _, obj := range []struct {
		path  string
		match func(discovery.Mapping) bool
	}{
		{filepath.Join(dir, "exe"), func(m discovery.Mapping) bool { return sameInode(m, exe) }},
		{"", func(m discovery.Mapping) bool {
			base := filepath.Base(m.Path)
			return strings.HasPrefix(base, "libc.so") || strings.HasPrefix(base, "libc-")
		}},
	} {
		for _, m := range maps {
			if m.Offset != 0 || !obj.match(m) {
				continue
			}
			path := obj.path
			if path == "" {
				path = filepath.Join(dir, "root", m.Path)
			}
			off, err := symbolOffset(path, "__environ", "environ")
			if err == nil {
				return m.Start + off, nil
			}
			errs = append(errs, err)
			break
		}
	}
	return 0, errors.Join(append(errs, errors.New("no environ in the executable or libc"))...)
}

func sameInode(m discovery.Mapping, fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && m.Inode == st.Ino
}

// symbolOffset is the offset of the first of names that the ELF file at path defines, from
// the start of its first loaded segment (where a mapping of its offset 0 begins).
func symbolOffset(path string, names ...string) (uint64, error) {
	f, err := elf.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	var first uint64
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			first = p.Vaddr &^ 0xfff
			break
		}
	}
	for _, name := range names {
		for _, s := range syms {
			if s.Name == name && s.Section != elf.SHN_UNDEF && elf.ST_TYPE(s.Info) == elf.STT_OBJECT {
				return s.Value - first, nil
			}
		}
	}
	return 0, fmt.Errorf("%s defines none of %v", path, names)
}
