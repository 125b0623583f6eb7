package main

import (
	"encoding/json"
	"os/exec"
	"strings"
)

// foreignUprobes counts the uprobes attached on this machine by anything but ownPID (our
// agent, 0 = none), from bpftool: `perf list` (perf-event uprobes, with their owner) and
// `link list` (uprobe_multi links, with owners when bpftool knows them). A uprobe in nginx or
// libc costs every process mapping that file even when its BPF program filters the process
// out, so another test's probes slow our gateway down and skew a "without" round. -1 when
// bpftool is not usable.
func foreignUprobes(ownPID int) int {
	if _, err := exec.LookPath("bpftool"); err != nil {
		return -1
	}
	n := 0
	ok := false
	if out, err := exec.Command("bpftool", "-j", "perf", "list").Output(); err == nil {
		var entries []struct {
			PID    int    `json:"pid"`
			FDType string `json:"fd_type"`
		}
		if json.Unmarshal(out, &entries) == nil {
			ok = true
			for _, e := range entries {
				if strings.Contains(e.FDType, "uprobe") && (ownPID == 0 || e.PID != ownPID) {
					n++
				}
			}
		}
	}
	if out, err := exec.Command("bpftool", "-j", "link", "list").Output(); err == nil {
		var entries []struct {
			Type string `json:"type"`
			PIDs []struct {
				PID int `json:"pid"`
			} `json:"pids"`
		}
		if json.Unmarshal(out, &entries) == nil {
			ok = true
			for _, e := range entries {
				if !strings.Contains(e.Type, "uprobe") {
					continue
				}
				mine := false
				for _, p := range e.PIDs {
					if ownPID != 0 && p.PID == ownPID {
						mine = true
					}
				}
				if !mine {
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
