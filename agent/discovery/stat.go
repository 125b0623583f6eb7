package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Stat is the part of /proc/<pid>/stat that discovery needs.
type Stat struct {
	PID int
	// Comm is the name between the parentheses. The kernel copies it verbatim, so it may
	// hold spaces, parentheses and even newlines (prctl PR_SET_NAME accepts any bytes).
	Comm  string
	State byte // R, S, D, Z, T, ...
	PPID  int
	// StartTime is field 22: clock ticks after boot at which the process started.
	StartTime uint64
}

var errShortStat = errors.New("stat: too few fields")

// ParseStat parses the contents of /proc/<pid>/stat.
//
// The comm field is the only one that can contain spaces or ')', and every field after it
// is a number or a single state letter, so the comm ends at the LAST ')' of the line;
// splitting the whole line on spaces (or stopping at the first ')') misreads a process
// named "a) b" or "x y".
func ParseStat(b []byte) (Stat, error) {
	s, comm, err := parseStat(b)
	if comm != nil {
		s.Comm = string(comm)
	}
	return s, err
}

// parseStat is ParseStat without the copy of the comm, which it returns as a slice of b
// (nil when there is none): a scan parses the stat of every wanted process every time.
func parseStat(b []byte) (Stat, []byte, error) {
	var s Stat
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return s, nil, fmt.Errorf("stat: no (comm) in %.40q", b)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil || pid <= 0 {
		return s, nil, fmt.Errorf("stat: bad pid %.20q", b[:open])
	}
	s.PID = pid
	comm := b[open+1 : closing]
	// Fields 3.. (state, ppid, ..., starttime at 22) follow ") ", separated by ASCII
	// whitespace: the kernel writes single spaces.
	const startTimeIdx = 22 - 3
	var state, ppidField, startField []byte
	rest := b[closing+1:]
	for i := 0; i <= startTimeIdx; i++ {
		var f []byte
		if f, rest = nextField(rest); f == nil {
			return s, comm, errShortStat
		}
		switch i {
		case 0:
			state = f
		case 1:
			ppidField = f
		case startTimeIdx:
			startField = f
		}
	}
	if len(state) != 1 {
		return s, comm, fmt.Errorf("stat: bad state %.10q", state)
	}
	s.State = state[0]
	ppid, err := strconv.Atoi(string(ppidField))
	if err != nil || ppid < 0 {
		return s, comm, fmt.Errorf("stat: bad ppid %.20q", ppidField)
	}
	s.PPID = ppid
	st, err := strconv.ParseUint(string(startField), 10, 64)
	if err != nil {
		return s, comm, fmt.Errorf("stat: bad starttime %.24q", startField)
	}
	s.StartTime = st
	return s, comm, nil
}

// nextField returns the first run of non-whitespace bytes of b (nil if none) and what
// follows it.
func nextField(b []byte) (field, rest []byte) {
	i := 0
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	j := i
	for j < len(b) && !isSpace(b[j]) {
		j++
	}
	if i == j {
		return nil, nil
	}
	return b[i:j], b[j:]
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\n' || c == '\t' || c == '\v' || c == '\f' || c == '\r'
}
