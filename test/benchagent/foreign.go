package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// ownedProgIDs returns the IDs of the BPF programs pid holds, directly or through links,
// from /proc/<pid>/fdinfo (bpftool's "pids" needs a build this machine's bpftool lacks).
func ownedProgIDs(pid int) map[int]bool {
	ids := map[int]bool{}
	if pid == 0 {
		return ids
	}
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fdinfo")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return ids
	}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "prog_id:"); ok {
				if id, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
					ids[id] = true
				}
			}
		}
		f.Close()
	}
	return ids
}

// foreignUprobes counts the uprobes of other owners than ownPIDs (our agent and the floor's
// bpftrace; 0 = none) on the files the gateway's workers map (its nginx binary, modules,
// libc, OpenSSL): another test's agent or bpftrace there fires in our workers too, so a
// "none" side would pay a trap per request and every ratio would shrink toward 1. Perf-event
// uprobes come from `bpftool perf list` (which names the file); uprobe_multi links from the
// "path:" of every process's link fds in /proc/*/fdinfo (Debian's bpftool 7.1 does not name
// it). -1 when neither can be read. ownPIDs' uprobes are told apart by their programs.
func foreignUprobes(workers []int, ownPIDs ...int) (int, []string) {
	mapped := mappedFiles(workers)
	if len(mapped) == 0 {
		return -1, nil
	}
	var paths []string
	own := map[int]bool{}
	ownPID := map[int]bool{}
	for _, p := range ownPIDs {
		if p == 0 {
			continue
		}
		ownPID[p] = true
		for id := range ownedProgIDs(p) {
			own[id] = true
		}
	}
	n := 0
	ok := false
	if out, err := exec.Command("bpftool", "-j", "perf", "list").Output(); err == nil {
		var entries []struct {
			PID      int    `json:"pid"`
			ProgID   int    `json:"prog_id"`
			FDType   string `json:"fd_type"`
			Filename string `json:"filename"`
		}
		if json.Unmarshal(out, &entries) == nil {
			ok = true
			for _, e := range entries {
				if strings.Contains(e.FDType, "uprobe") && !own[e.ProgID] && !ownPID[e.PID] && mapped[canonical(e.Filename)] {
					n++
					paths = append(paths, e.Filename)
				}
			}
		}
	}
	if links, err := uprobeMultiLinks(); err == nil {
		ok = true
		for _, l := range links {
			if !own[l.progID] && !ownPID[l.pid] && mapped[canonical(l.path)] {
				n++
				paths = append(paths, l.path)
			}
		}
	}
	if !ok {
		return -1, nil
	}
	return n, paths
}

// mappedFiles is the set of files (canonical paths) the processes map.
func mappedFiles(pids []int) map[string]bool {
	out := map[string]bool{}
	for _, pid := range pids {
		f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "maps"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 6 && strings.HasPrefix(fields[5], "/") {
				out[canonical(fields[5])] = true
			}
		}
		f.Close()
	}
	return out
}

func canonical(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

type uprobeLink struct {
	pid, progID int
	path        string
}

// uprobeMultiLinks lists the uprobe_multi links held by any process, from /proc/*/fdinfo.
func uprobeMultiLinks() ([]uprobeLink, error) {
	fds, err := filepath.Glob("/proc/[0-9]*/fdinfo/*")
	if err != nil {
		return nil, err
	}
	var out []uprobeLink
	for _, fd := range fds {
		raw, err := os.ReadFile(fd)
		if err != nil || !strings.Contains(string(raw), "link_type:\tuprobe_multi") {
			continue
		}
		l := uprobeLink{}
		l.pid, _ = strconv.Atoi(strings.Split(fd, "/")[2])
		for _, line := range strings.Split(string(raw), "\n") {
			k, v, found := strings.Cut(line, ":")
			if !found {
				continue
			}
			v = strings.TrimSpace(v)
			switch k {
			case "prog_id":
				l.progID, _ = strconv.Atoi(v)
			case "path":
				l.path = v
			}
		}
		out = append(out, l)
	}
	return out, nil
}
