package probes

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/bpf"
)

// SetPIDs replaces a tracked gateway's PIDs (after a reload or a worker respawn).
func (p *Probes) SetPIDs(id discovery.GatewayID, pids []int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if g, ok := p.gws[id]; ok {
		if err := p.setPIDsLocked(g, pids); err != nil {
			p.lastErr = err.Error()
			p.log().Error(err, "update process filter", "gateway", id)
		}
	}
}

// setPIDsLocked makes the kernel filter hold the gateway's pids and its master. The master
// serves no requests in master/worker mode (and is one of pids when it does), but with it in
// the filter the kernel accepts the requests of workers it forks before user space lists
// them, and adds them to the filter itself (adopt() in bpf/nginxreq.c). Adopted entries of
// processes that are gone (or no longer the master's children) are removed here.
func (p *Probes) setPIDsLocked(g *gateway, pids []int) error {
	// Once for the removals (before the new entries' load bases are read from /proc), once for
	// the entries put.
	defer p.filterChangedLocked()
	master := g.gw.Master.PID
	want := map[int]bool{master: true}
	for _, pid := range pids {
		want[pid] = true
	}
	p.reapAdoptedLocked(g, want)
	for pid := range g.pids {
		if !want[pid] {
			p.objs.NginxreqProcs.Delete(uint32(pid))
			delete(g.pids, pid)
		}
	}
	p.filterChangedLocked()
	for pid := range g.req {
		delete(p.pidOwner, pid)
	}
	g.req = map[int]bool{}
	for _, pid := range pids {
		g.req[pid] = true
		p.pidOwner[pid] = g.gw.ID()
	}
	var errs []error
	for pid := range want {
		if g.pids[pid] {
			continue
		}
		v := bpf.NginxReqNginxreqProc{LayoutId: g.bin.id, Master: uint32(master)}
		if g.bin.info.cachedTime != 0 && !p.opts.NoCachedTime {
			base, err := loadBase(pid, g.bin.key.ino, g.bin.info)
			if err != nil {
				// Latency falls back to the kernel clock (not nginx's exact ms).
				p.log().Info("no load base; latency from kernel clock", "pid", pid, "err", err.Error())
			} else {
				v.CachedTimeAddr = base + g.bin.info.cachedTime
			}
		}
		if err := p.objs.NginxreqProcs.Put(uint32(pid), &v); err != nil {
			errs = append(errs, fmt.Errorf("filter pid %d: %w", pid, err))
			continue
		}
		g.pids[pid] = true
	}
	return errors.Join(errs...)
}

// removePIDsLocked takes all of a gateway's entries out of the kernel filter: the master,
// the workers and those the kernel adopted.
func (p *Probes) removePIDsLocked(g *gateway) {
	defer p.filterChangedLocked()
	// The master's entry first: with it gone the kernel adopts no more of its children, so the
	// adopted entries listed next are all there are.
	for pid := range g.pids {
		p.objs.NginxreqProcs.Delete(uint32(pid))
	}
	for _, pid := range p.adoptedLocked(g, nil) {
		p.objs.NginxreqProcs.Delete(uint32(pid))
	}
	for pid := range g.req {
		delete(p.pidOwner, pid)
	}
	g.pids, g.req = map[int]bool{}, map[int]bool{}
}

// filterChangedLocked tells the programs that the kernel filter (nginxreq_procs) may have
// changed: they keep a copy of a process's entry and use it only while the config's
// procs_gen stays the same. Called after every change, so a process taken out of the filter
// is not counted from its next request on.
func (p *Probes) filterChangedLocked() {
	p.procsGen++
	if err := p.objs.NginxreqCfg.Put(uint32(0), p.config(p.opts.Now())); err != nil {
		p.lastErr = err.Error()
		p.log().Error(err, "write BPF config after a change of the process filter")
	}
}

// reapAdoptedLocked removes the entries the kernel adopted for the gateway whose process is
// gone or is no longer a child of the master (its PID reused); want are about to be put.
func (p *Probes) reapAdoptedLocked(g *gateway, want map[int]bool) {
	master := g.gw.Master.PID
	for _, pid := range p.adoptedLocked(g, want) {
		if ppid, err := parentPID(pid); err == nil && ppid == master {
			continue // a live worker discovery has not listed yet
		}
		p.objs.NginxreqProcs.Delete(uint32(pid))
	}
}

// adoptedLocked lists the kernel filter's entries for the gateway that user space did not
// put there (nor is about to: skip).
func (p *Probes) adoptedLocked(g *gateway, skip map[int]bool) []int {
	var (
		key  uint32
		v    bpf.NginxReqNginxreqProc
		out  []int
		mine = uint32(g.gw.Master.PID)
	)
	it := p.objs.NginxreqProcs.Iterate()
	for it.Next(&key, &v) {
		if v.Master == mine && !g.pids[int(key)] && !skip[int(key)] {
			out = append(out, int(key))
		}
	}
	return out
}

// parentPID reads a process's parent PID from /proc/<pid>/stat (PIDs as the agent sees them).
func parentPID(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	fs := strings.Fields(s[i+1:])
	if len(fs) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	return strconv.Atoi(fs[1])
}
