package discovery

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"syscall"
)

const (
	// DefaultProcRoot is where the agent's PID namespace's /proc is mounted.
	DefaultProcRoot = "/proc"
	// DefaultName is the comm of Kong's (OpenResty's) and nginx's processes.
	DefaultName = "nginx"
	// commLen is TASK_COMM_LEN-1: the kernel keeps only the first 15 bytes of a name.
	commLen = 15
)

// Scanner finds nginx gateways by walking a /proc tree.
//
// PIDs are those of the PID namespace whose /proc is mounted at ProcRoot: in a pod with
// shareProcessNamespace (or under `unshare --pid --mount-proc`) they are the pod's PIDs,
// not the host's. A /proc mounted with hidepid=1/2 hides other users' processes.
type Scanner struct {
	// ProcRoot is the /proc to read; empty means /proc. Tests point it at a fake tree.
	ProcRoot string
	// Name is the process name to look for, compared with /proc/<pid>/comm (what
	// `ps -o comm` shows, not the command line); empty means "nginx". Names longer than 15
	// bytes are compared on their first 15, as the kernel truncates comm.
	Name string
}

type role int

const (
	roleOther  role = iota // a title nginx did not set (e.g. master_process off), or unknown
	roleMaster             // "nginx: master process ..."
	roleWorker             // "nginx: worker process" (possibly "... is shutting down")
	roleHelper             // cache manager/loader, privileged agent: serve no requests
)

type proc struct {
	Process
	role role
}

// classify reads nginx's process title. nginx (and OpenResty, so Kong) always prefixes
// its titles with "nginx: ", whatever the binary is called.
func classify(title string) (role, bool) {
	switch {
	case strings.HasPrefix(title, "nginx: master process"):
		return roleMaster, false
	case strings.HasPrefix(title, "nginx: worker process"):
		return roleWorker, strings.Contains(title, "shutting down")
	case strings.HasPrefix(title, "nginx: cache "), strings.HasPrefix(title, "nginx: privileged agent"):
		return roleHelper, false
	}
	return roleOther, false
}

func (s Scanner) root() string {
	if s.ProcRoot == "" {
		return DefaultProcRoot
	}
	return s.ProcRoot
}

func (s Scanner) name() string {
	n := s.Name
	if n == "" {
		n = DefaultName
	}
	if len(n) > commLen {
		n = n[:commLen]
	}
	return n
}

// Scan returns the gateways running now, sorted by master PID, each with its workers
// sorted by PID.
//
// Processes that exit while being read are ignored, as are zombies. A master with no
// children (master_process off) is a gateway without workers; so is a worker whose master
// died (it keeps serving). Cache manager/loader and privileged agent processes are not
// workers. A new master started by a binary upgrade (a child of the old master titled
// "master process", with workers of its own) is a gateway of its own.
//
// The error is non-nil when ProcRoot cannot be read (the result is then nil) or when some
// gateway's executable could not be identified: those gateways are still returned, with
// Gateway.Err set, and the error joins their errors.
func (s Scanner) Scan() ([]Gateway, error) {
	c := newProcCache(s)
	defer c.close()
	return c.scan()
}

// gateways groups the processes of the last listing into gateways (see Scan).
func (c *procCache) gateways() ([]Gateway, error) {
	procs := c.procs
	hasChildren := c.hasChildren
	clear(hasChildren)
	for _, p := range procs {
		hasChildren[p.PPID] = true
	}
	byMaster := map[int]*Gateway{}
	// A root is a process whose parent is not one of ours, or a master-titled child that
	// has children of its own: the new master of a binary upgrade (USR2). A master-titled
	// child without children is a worker just forked that has not set its title yet (or a
	// new master about to fork its own workers): counting it as a worker of its parent
	// avoids reporting a short-lived gateway on every reload.
	isRoot := func(p *proc) bool {
		parent, ok := procs[p.PPID]
		return !ok || parent.PID == p.PID || (p.role == roleMaster && hasChildren[p.PID])
	}
	for _, p := range procs {
		if isRoot(p) {
			byMaster[p.PID] = &Gateway{Master: p.Process}
		}
	}
	for _, p := range procs {
		if isRoot(p) || p.role == roleHelper {
			continue
		}
		// Only children of a root are workers: a same-named grandchild is a transient
		// fork (e.g. Lua's os.execute before exec), not a request server.
		if g, ok := byMaster[p.PPID]; ok {
			g.Workers = append(g.Workers, p.Process)
		}
	}

	var errs []error
	out := make([]Gateway, 0, len(byMaster))
	for pid, g := range byMaster {
		slices.SortFunc(g.Workers, func(a, b Process) int { return cmp.Compare(a.PID, b.PID) })
		paths := c.entries[pid].paths(c.root, pid)
		g.Exe, g.Root = paths.exe, paths.root
		var st syscall.Stat_t
		err := stat(paths.exe, &st)
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH):
			continue // the master exited since we read it
		case errors.Is(err, fs.ErrPermission):
			g.Err = fmt.Errorf("discovery: gateway master %d: %w (reading another user's "+
				"/proc/<pid>/exe needs CAP_SYS_PTRACE)", pid, err)
		case err != nil:
			g.Err = fmt.Errorf("discovery: gateway master %d: %w", pid, err)
		default:
			g.ExeDev, g.ExeIno = uint64(st.Dev), st.Ino
		}
		if g.Err != nil {
			errs = append(errs, g.Err)
		}
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b Gateway) int { return cmp.Compare(a.Master.PID, b.Master.PID) })
	return out, errors.Join(errs...)
}

// stat is os.Stat without its FileInfo allocation; the error is the one os.Stat returns.
func stat(path string, st *syscall.Stat_t) error {
	for {
		err := syscall.Stat(path, st)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return &fs.PathError{Op: "stat", Path: path, Err: err}
		}
		return nil
	}
}
