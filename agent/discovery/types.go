// Package discovery finds the gateway's nginx processes (master and workers) through /proc
// and follows them as they change: reloads replace workers, workers crash and are respawned,
// the gateway stops and starts, several gateway instances run side by side.
package discovery

// Process is one process as seen from the agent's PID namespace.
type Process struct {
	PID  int
	PPID int
	// Comm is the kernel's process name (/proc/<pid>/comm, what `ps -o comm` shows).
	Comm string
	// StartTime is the process start time in clock ticks since boot (/proc/<pid>/stat field
	// 22): together with PID it identifies a process across PID reuse.
	StartTime uint64
	// Title is /proc/<pid>/cmdline with NULs turned into spaces and trimmed: nginx's process
	// title, e.g. "nginx: worker process" (added: diagnostics and role detection).
	Title string
	// ShuttingDown marks a worker retired by a reload or graceful stop ("nginx: worker
	// process is shutting down"): it still finishes its in-flight requests, then exits
	// (added: the agent keeps watching it until it is gone).
	ShuttingDown bool
}

// Gateway is one nginx instance: a master and its workers (or a single process when nginx
// runs with master_process off).
type Gateway struct {
	Master  Process
	Workers []Process
	// Exe is a path through which the gateway's executable can be opened from the agent's
	// mount namespace: /proc/<master>/exe.
	Exe string
	// Root is /proc/<master>/root: the gateway's file system, for its shared libraries.
	Root string
	// ExeDev and ExeIno identify the executable file; gateways sharing a binary share uprobes.
	ExeDev uint64
	ExeIno uint64
	// Err is set when the gateway was found but its executable could not be identified
	// (ExeDev/ExeIno are then zero), typically EACCES on another user's /proc/<pid>/exe
	// without CAP_SYS_PTRACE (Scan reports such gateways instead of dropping them).
	Err error
}

// ID identifies a gateway instance for as long as its master lives.
func (g Gateway) ID() GatewayID { return GatewayID{PID: g.Master.PID, StartTime: g.Master.StartTime} }

// GatewayID is a master's PID plus its start time.
type GatewayID struct {
	PID       int
	StartTime uint64
}

// PIDs returns the PIDs whose requests the agent must see: the workers, and the master too
// when it serves requests itself (no workers: master_process off or single-process mode).
func (g Gateway) PIDs() []int {
	if len(g.Workers) == 0 {
		return []int{g.Master.PID}
	}
	out := make([]int, 0, len(g.Workers))
	for _, w := range g.Workers {
		out = append(out, w.PID)
	}
	return out
}
