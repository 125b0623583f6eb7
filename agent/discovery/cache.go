package discovery

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// procCache is what a scan keeps for the next one. Watch scans every second for as long as
// the agent runs, and most of what it reads belongs to processes it does not watch, so:
//
//   - On procfs, the files a scan reads stay open, one comm per process (plus stat and
//     cmdline for the processes that have the wanted name): the next scan rereads each with
//     one pread instead of open, read and close. An open /proc/<pid> file refers to the
//     process, not to the PID: once the process is gone, reading fails with ESRCH, even if
//     a new process got the PID, and the PID's files are then opened afresh.
//   - comm is still read for every process on every scan: exec (e.g. an entrypoint script
//     that execs nginx) and prctl(PR_SET_NAME) change it under the same PID and start time.
//   - Nothing allocates per process that has not changed: the listing is parsed from a
//     reused getdents buffer, paths are built in a reused buffer, a process's title is
//     rebuilt only when its cmdline bytes change.
//
// Entries of PIDs missing from a listing are dropped with their descriptors, so the cache
// holds no more than the processes alive at the last scan. A fake tree (not procfs) is
// reread from its paths every scan: an open file there outlives its replacement.
type procCache struct {
	root, want string
	// checked: the file system of root has been looked at; hold: it is procfs, files may
	// stay open; budget: how many more descriptors may stay open.
	checked, hold bool
	budget        int
	gen           uint64 // scans so far: entries listed by the current scan carry it
	entries       map[int]*procEntry
	// procs: the wanted, live processes of the current scan (pointers into entries).
	procs       map[int]*proc
	hasChildren map[int]bool
	dents, buf  []byte
	path        []byte
}

// procEntry is what is kept about one PID. Its descriptors are -1 when not held.
type procEntry struct {
	gen            uint64
	commFD, statFD int
	cmdlineFD      int
	p              proc   // valid when the last scan found the wanted name
	cmdline        []byte // the cmdline p.Title and p.role were made from
	gatewayPaths   *gatewayPaths
}

type gatewayPaths struct{ exe, root string }

// maxHeld bounds the descriptors a cache keeps open, whatever the process count: each
// pins a few hundred bytes of kernel memory. A quarter of RLIMIT_NOFILE is the other
// bound, leaving the rest to the agent's maps, sockets and files.
const maxHeld = 8192

// procSuperMagic is PROC_SUPER_MAGIC, statfs's f_type for procfs.
const procSuperMagic = 0x9fa0

func newProcCache(s Scanner) *procCache {
	return &procCache{
		root: s.root(), want: s.name(),
		entries: map[int]*procEntry{}, procs: map[int]*proc{}, hasChildren: map[int]bool{},
		dents: make([]byte, 8192), buf: make([]byte, 4096), path: make([]byte, 0, 64),
	}
}

// close closes every descriptor the cache holds and forgets every entry.
func (c *procCache) close() {
	for pid, e := range c.entries {
		c.release(e)
		delete(c.entries, pid)
	}
}

// scan lists root and reads every process in it; see Scanner.Scan.
func (c *procCache) scan() ([]Gateway, error) {
	dir, err := openDir(c.root)
	if err != nil {
		return nil, fmt.Errorf("discovery: reading %s: %w", c.root, &fs.PathError{Op: "open", Path: c.root, Err: err})
	}
	defer syscall.Close(dir)
	if !c.checked {
		c.checked = true
		var fsst syscall.Statfs_t
		var lim syscall.Rlimit
		if syscall.Fstatfs(dir, &fsst) == nil && fsst.Type == procSuperMagic &&
			syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
			c.hold, c.budget = true, int(min(lim.Cur/4, maxHeld))
		}
	}
	c.gen++
	clear(c.procs)
	for {
		n, err := syscall.Getdents(dir, c.dents)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("discovery: reading %s: %w", c.root, &fs.PathError{Op: "readdirent", Path: c.root, Err: err})
		}
		if n == 0 {
			break
		}
		for b := c.dents[:n]; len(b) >= 19; {
			// struct linux_dirent64: ino, off (8 bytes each), reclen (2), type (1), name.
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen < 19 || reclen > len(b) {
				break
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if pid, ok := parsePID(name); ok {
				c.visit(dir, pid)
			}
			b = b[reclen:]
		}
	}
	for pid, e := range c.entries {
		if e.gen != c.gen {
			c.release(e)
			delete(c.entries, pid)
		}
	}
	return c.gateways()
}

// visit reads the process pid and, if it is ours and alive, adds it to c.procs.
func (c *procCache) visit(dir, pid int) {
	e := c.entries[pid]
	if e == nil {
		e = &procEntry{commFD: -1, statFD: -1, cmdlineFD: -1}
		c.entries[pid] = e
	}
	e.gen = c.gen
	n, err := c.read(dir, pid, &e.commFD, "comm", &c.buf, false)
	if err != nil && e.commFD >= 0 {
		// The process this entry held is gone; pid may belong to a new one.
		c.release(e)
		n, err = c.read(dir, pid, &e.commFD, "comm", &c.buf, false)
	}
	if err != nil {
		return
	}
	// The kernel appends one newline; the name itself may end in whitespace.
	if string(bytes.TrimSuffix(c.buf[:n], []byte{'\n'})) != c.want {
		c.forgetFiles(e)
		return
	}
	n, err = c.read(dir, pid, &e.statFD, "stat", &c.buf, false)
	if err != nil {
		return
	}
	st, _, err := parseStat(c.buf[:n])
	if err != nil || st.PID != pid || st.State == 'Z' || st.State == 'X' {
		return
	}
	n, err = c.read(dir, pid, &e.cmdlineFD, "cmdline", &c.buf, true)
	if err != nil {
		return
	}
	if raw := c.buf[:n]; e.cmdline == nil || !bytes.Equal(raw, e.cmdline) {
		e.cmdline = append(e.cmdline[:0], raw...)
		e.p.Title = strings.TrimSpace(string(bytes.ReplaceAll(raw, []byte{0}, []byte{' '})))
		e.p.role, e.p.ShuttingDown = classify(e.p.Title)
	}
	e.p.PID, e.p.PPID, e.p.Comm, e.p.StartTime = pid, st.PPID, c.want, st.StartTime
	c.procs[pid] = &e.p
}

// read reads /proc/<pid>/<file> into *buf from the descriptor *fd holds, or else opens
// it, and holds the new descriptor in *fd when allowed. whole: read to the end, growing
// *buf; otherwise one read, as the file fits.
func (c *procCache) read(dir, pid int, fd *int, file string, buf *[]byte, whole bool) (int, error) {
	if *fd >= 0 {
		n, err := pread(*fd, buf, whole)
		if err != nil {
			c.closeFD(fd)
		}
		return n, err
	}
	c.path = append(strconv.AppendInt(c.path[:0], int64(pid), 10), '/')
	c.path = append(append(c.path, file...), 0)
	f, err := openat(dir, c.path)
	if err != nil {
		return 0, err
	}
	n, err := pread(f, buf, whole)
	if err == nil && c.hold && c.budget > 0 {
		*fd = f
		c.budget--
	} else {
		syscall.Close(f)
	}
	return n, err
}

// forgetFiles closes the stat and cmdline descriptors of a process that is not (or no
// longer) ours, and forgets what was read from them.
func (c *procCache) forgetFiles(e *procEntry) {
	if e.statFD >= 0 || e.cmdlineFD >= 0 || e.cmdline != nil || e.p != (proc{}) {
		c.closeFD(&e.statFD)
		c.closeFD(&e.cmdlineFD)
		e.p, e.cmdline = proc{}, nil
	}
}

// release closes all of an entry's descriptors and forgets what was read from them.
func (c *procCache) release(e *procEntry) {
	c.forgetFiles(e)
	c.closeFD(&e.commFD)
	e.gatewayPaths = nil
}

// closeFD closes a held descriptor, if any, and gives it back to the budget.
func (c *procCache) closeFD(fd *int) {
	if *fd >= 0 {
		syscall.Close(*fd)
		*fd = -1
		c.budget++
	}
}

// paths returns the /proc paths of a gateway whose master is pid, built once per entry.
func (e *procEntry) paths(root string, pid int) *gatewayPaths {
	if e.gatewayPaths == nil {
		dir := filepath.Join(root, strconv.Itoa(pid))
		e.gatewayPaths = &gatewayPaths{exe: filepath.Join(dir, "exe"), root: filepath.Join(dir, "root")}
	}
	return e.gatewayPaths
}

// parsePID parses a /proc entry name made only of digits.
func parsePID(name []byte) (int, bool) {
	if len(name) == 0 || len(name) > 10 {
		return 0, false
	}
	pid := 0
	for _, ch := range name {
		if ch < '0' || ch > '9' {
			return 0, false
		}
		pid = pid*10 + int(ch-'0')
	}
	return pid, pid > 0
}

func openDir(path string) (int, error) {
	for {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// openat opens the NUL-terminated path relative to dir for reading, without the string
// conversions of syscall.Openat.
func openat(dir int, path []byte) (int, error) {
	for {
		fd, _, errno := syscall.Syscall6(syscall.SYS_OPENAT, uintptr(dir), uintptr(unsafe.Pointer(&path[0])),
			syscall.O_RDONLY|syscall.O_CLOEXEC, 0, 0, 0)
		switch errno {
		case 0:
			return int(fd), nil
		case syscall.EINTR:
			continue
		}
		return -1, errno
	}
}

// pread reads fd from its start into *buf: once, or (whole) until a read comes back
// short, doubling *buf when it fills up. procfs fills a read as far as the file goes, so
// a short read is the end.
func pread(fd int, buf *[]byte, whole bool) (int, error) {
	n := 0
	for {
		m, err := syscall.Pread(fd, (*buf)[n:], int64(n))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		n += m
		if !whole || n < len(*buf) {
			return n, nil
		}
		*buf = append(*buf, make([]byte, len(*buf))...)
	}
}
