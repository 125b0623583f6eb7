package discovery

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Mapping is one line of /proc/<pid>/maps: a file (or anonymous memory) mapped at Start.
type Mapping struct {
	Start, Offset, Inode uint64
	// Path is the mapped file's path as the process sees it ("" for anonymous memory).
	Path string
}

// ReadMaps reads /proc/<pid>/maps under procRoot (empty: /proc).
func ReadMaps(procRoot string, pid int) ([]Mapping, error) {
	if procRoot == "" {
		procRoot = DefaultProcRoot
	}
	f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "maps"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fs := strings.Fields(sc.Text())
		if len(fs) < 5 {
			continue
		}
		start, _, _ := strings.Cut(fs[0], "-")
		m := Mapping{Path: strings.Join(fs[5:], " ")}
		var err1, err2, err3 error
		m.Start, err1 = strconv.ParseUint(start, 16, 64)
		m.Offset, err2 = strconv.ParseUint(fs[2], 16, 64)
		m.Inode, err3 = strconv.ParseUint(fs[4], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil {
			continue
		}
		out = append(out, m)
	}
	return out, sc.Err()
}
