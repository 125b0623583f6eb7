package probes

import (
	"debug/elf"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
)

// binaryInfo is what the agent needs from an nginx executable's ELF file.
type binaryInfo struct {
	pie bool
	// cachedTime is the st_value of ngx_cached_time (a `volatile ngx_time_t *`), 0 if the
	// binary does not export it.
	cachedTime uint64
	// firstLoad is the page-aligned virtual address of the first PT_LOAD segment.
	firstLoad uint64
	// has reports which of the symbols we care about the file exports (dynamic or static).
	has map[string]bool
}

var wantedSymbols = []string{"ngx_http_free_request", "ngx_cached_time"}

func readBinary(path string, extra ...string) (*binaryInfo, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	bi := &binaryInfo{pie: f.Type == elf.ET_DYN, has: map[string]bool{}}
	first := true
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && first {
			bi.firstLoad = p.Vaddr &^ 0xfff
			first = false
		}
	}
	want := map[string]bool{}
	for _, s := range append(wantedSymbols, extra...) {
		want[s] = true
	}
	scan := func(syms []elf.Symbol) {
		for _, s := range syms {
			if !want[s.Name] || s.Section == elf.SHN_UNDEF {
				continue
			}
			bi.has[s.Name] = true
			if s.Name == "ngx_cached_time" {
				bi.cachedTime = s.Value
			}
		}
	}
	if syms, err := f.DynamicSymbols(); err == nil {
		scan(syms)
	}
	if syms, err := f.Symbols(); err == nil {
		scan(syms)
	}
	return bi, nil
}

// loadBase is the difference between run-time and link-time addresses of the executable
// (identified by inode) in process pid.
func loadBase(pid int, ino uint64, bi *binaryInfo) (uint64, error) {
	if !bi.pie {
		return 0, nil
	}
	ms, err := discovery.ReadMaps("", pid)
	if err != nil {
		return 0, err
	}
	for _, m := range ms {
		if m.Inode == ino && m.Offset == 0 {
			return m.Start - bi.firstLoad, nil
		}
	}
	return 0, fmt.Errorf("executable (inode %d) not mapped in pid %d", ino, pid)
}

// mappedFiles returns the distinct paths (as the process sees them) of mapped files whose
// name contains substr, in mapping order.
func mappedFiles(pid int, substr string) ([]string, error) {
	ms, err := discovery.ReadMaps("", pid)
	if err != nil {
		return nil, err
	}
	var out []string
	seen := map[string]bool{}
	for _, m := range ms {
		p := strings.TrimSuffix(m.Path, " (deleted)")
		if strings.HasPrefix(p, "/") && strings.Contains(filepath.Base(p), substr) && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}
