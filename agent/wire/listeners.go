package wire

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// listeners finds, through /proc, the listening socket of a gateway worker's fd: its socket
// inode (/proc/<pid>/fd/<fd> links to socket:[inode]), then that inode's local port in
// /proc/<pid>/net/tcp and tcp6, or its presence in /proc/<pid>/net/unix.
//
// The kernel side tells user space, once per connection, which listening fd a connection was
// accepted from (accept, accept4) and which socket a TLS session is on (SSL_set_fd), in the
// ring's order: a connection's requests are attributed without any /proc lookup at all once
// its worker's listening fd is known. Listening sockets live as long as their worker, so
// (pid, fd) is resolved once and cached: the /proc reads are per worker and listener, not
// per connection or request (Lookups counts them). A connection that predates the agent has
// had no accept event; it is looked up by its own fd at its first request, which is right
// unless the fd was closed and reused in the moment between the request and the lookup.
type listeners struct {
	procRoot string
	byFD     map[pidFD]Listener // listening sockets
	// byInode: the TCP and unix sockets of the last /proc/<pid>/net scan, by inode.
	byInode map[uint64]Listener
	// Lookups counts the reads of /proc/<pid>/net (each reads tcp, tcp6 and unix).
	Lookups uint64
}

type pidFD struct{ pid, fd uint32 }

// maxListeningFDs bounds the cache; past it, it starts again.
const maxListeningFDs = 4096

func newListeners(procRoot string) *listeners {
	return &listeners{procRoot: procRoot, byFD: map[pidFD]Listener{}, byInode: map[uint64]Listener{}}
}

// listening returns the listener of listening socket fd of process pid.
func (l *listeners) listening(pid, fd uint32) Listener {
	k := pidFD{pid, fd}
	if s, ok := l.byFD[k]; ok {
		return s
	}
	s := l.socket(pid, fd)
	if !s.Known {
		return s // a listening socket that could not be read is not cached: the next try may
	}
	if len(l.byFD) >= maxListeningFDs {
		clear(l.byFD)
	}
	l.byFD[k] = s
	return s
}

// socket looks up the local port of process pid's socket fd (or says it is a unix-domain
// socket); Known is false when it cannot be found.
func (l *listeners) socket(pid, fd uint32) Listener {
	dir := filepath.Join(l.procRoot, strconv.FormatUint(uint64(pid), 10))
	link, err := os.Readlink(filepath.Join(dir, "fd", strconv.FormatUint(uint64(fd), 10)))
	if err != nil {
		return Listener{}
	}
	ino, ok := strings.CutPrefix(link, "socket:[")
	inode, err := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 64)
	if !ok || err != nil {
		return Listener{}
	}
	if s, ok := l.byInode[inode]; ok {
		return s
	}
	// A socket not seen yet: scan this worker's network namespace again.
	l.Lookups++
	clear(l.byInode)
	for _, f := range []string{"tcp", "tcp6", "unix"} {
		l.scan(filepath.Join(dir, "net", f), f == "unix")
	}
	return l.byInode[inode]
}

// scan adds the sockets of one /proc/<pid>/net table to byInode. tcp and tcp6 lines read
// "sl local_address rem_address st ... uid timeout inode ...", local_address hex
// "0100007F:1F90"; unix lines "Num RefCount Protocol Flags Type St Inode Path".
func (l *listeners) scan(path string, unix bool) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		col := 9
		if unix {
			col = 6
		}
		if len(fs) <= col {
			continue
		}
		inode, err := strconv.ParseUint(fs[col], 10, 64)
		if err != nil || inode == 0 {
			continue
		}
		if unix {
			l.byInode[inode] = Listener{Unix: true, Known: true}
			continue
		}
		_, port, ok := strings.Cut(fs[1], ":")
		p, err := strconv.ParseUint(port, 16, 16)
		if ok && err == nil {
			l.byInode[inode] = Listener{Port: uint16(p), Known: true}
		}
	}
}

// forget drops what is cached of processes no longer followed.
func (l *listeners) forget(keep func(pid uint32) bool) {
	for k := range l.byFD {
		if !keep(k.pid) {
			delete(l.byFD, k)
		}
	}
}
