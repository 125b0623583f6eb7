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

// bpfLinkTypeUprobeMulti is BPF_LINK_TYPE_UPROBE_MULTI: Debian's bpftool 7.1 predates it and
// prints the number.
const bpfLinkTypeUprobeMulti = "12"

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

// foreignUprobes counts the uprobes attached on this machine by anything but the processes
// ownPIDs (our agent and the floor's bpftrace; 0 = none), from bpftool: `perf list` (perf-event uprobes) and `link
// list` (uprobe_multi links). A uprobe in nginx or libc costs every process mapping that file
// even when its BPF program filters the process out, so another test's probes slow our
// gateway down and skew a "without" round. -1 when bpftool is not usable.
func foreignUprobes(ownPIDs ...int) int {
	if _, err := exec.LookPath("bpftool"); err != nil {
		return -1
	}
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
			PID    int    `json:"pid"`
			ProgID int    `json:"prog_id"`
			FDType string `json:"fd_type"`
		}
		if json.Unmarshal(out, &entries) == nil {
			ok = true
			for _, e := range entries {
				if strings.Contains(e.FDType, "uprobe") && !own[e.ProgID] && !ownPID[e.PID] {
					n++
				}
			}
		}
	}
	if out, err := exec.Command("bpftool", "-j", "link", "list").Output(); err == nil {
		var entries []struct {
			Type   json.RawMessage `json:"type"`
			ProgID int             `json:"prog_id"`
		}
		if json.Unmarshal(out, &entries) == nil {
			ok = true
			for _, e := range entries {
				t := strings.Trim(string(e.Type), `"`)
				if (t == bpfLinkTypeUprobeMulti || strings.Contains(t, "uprobe")) && !own[e.ProgID] {
					n++
				}
			}
		}
	}
	if !ok {
		return -1
	}
	return n
}
