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
	var s Stat
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return s, fmt.Errorf("stat: no (comm) in %.40q", b)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil || pid <= 0 {
		return s, fmt.Errorf("stat: bad pid %.20q", b[:open])
	}
	s.PID = pid
	s.Comm = string(b[open+1 : closing])
	// Fields 3.. (state, ppid, ..., starttime at 22) follow ") ".
	rest := bytes.Fields(b[closing+1:])
	const startTimeIdx = 22 - 3
	if len(rest) <= startTimeIdx {
		return s, errShortStat
	}
	if len(rest[0]) != 1 {
		return s, fmt.Errorf("stat: bad state %.10q", rest[0])
	}
	s.State = rest[0][0]
	ppid, err := strconv.Atoi(string(rest[1]))
	if err != nil || ppid < 0 {
		return s, fmt.Errorf("stat: bad ppid %.20q", rest[1])
	}
	s.PPID = ppid
	st, err := strconv.ParseUint(string(rest[startTimeIdx]), 10, 64)
	if err != nil {
		return s, fmt.Errorf("stat: bad starttime %.24q", rest[startTimeIdx])
	}
	s.StartTime = st
	return s, nil
}
