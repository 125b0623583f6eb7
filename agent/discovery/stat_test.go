package discovery

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestParseStat(t *testing.T) {
	for _, c := range []struct {
		line string
		want Stat
	}{
		{"1234 (nginx) S 1 1234 1234 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 98765 12345678 300\n",
			Stat{PID: 1234, Comm: "nginx", State: 'S', PPID: 1, StartTime: 98765}},
		{"7 (a) b (c)) R 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 42 0",
			Stat{PID: 7, Comm: "a) b (c)", State: 'R', PPID: 3, StartTime: 42}},
		{"8 (x\ny z) Z 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 18446744073709551615",
			Stat{PID: 8, Comm: "x\ny z", State: 'Z', StartTime: 18446744073709551615}},
		{"9 () S 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5", Stat{PID: 9, Comm: "", State: 'S', PPID: 1, StartTime: 5}},
	} {
		got, err := ParseStat([]byte(c.line))
		if err != nil || got != c.want {
			t.Errorf("ParseStat(%q) = %+v, %v; want %+v", c.line, got, err, c.want)
		}
	}
	for _, bad := range []string{
		"", "1234", "1234 nginx S 1", "(nginx) S 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5",
		"1 (nginx) S 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0",      // no starttime
		"1 (nginx) S x 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5",  // bad ppid
		"1 (nginx) SS 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5", // bad state
		"1 (nginx) S 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 -5", // bad starttime
		"-1 (nginx) S 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5", // bad pid
		") 1 (nginx S 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5", // parens reversed
	} {
		if s, err := ParseStat([]byte(bad)); err == nil {
			t.Errorf("ParseStat(%q) = %+v, want an error", bad, s)
		}
	}
}

// TestParseStatSelf compares with a naive split, which is right for this test binary's
// space-free name.
func TestParseStatSelf(t *testing.T) {
	raw, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip("no /proc")
	}
	s, err := ParseStat(raw)
	f := strings.Fields(string(raw))
	if err != nil || strconv.Itoa(s.PID) != f[0] || "("+s.Comm+")" != f[1] || strconv.Itoa(s.PPID) != f[3] ||
		strconv.FormatUint(s.StartTime, 10) != f[21] || s.PID != os.Getpid() || s.PPID != os.Getppid() {
		t.Errorf("ParseStat(%q) = %+v, %v", raw, s, err)
	}
}

// FuzzParseStat checks that arbitrary input never panics, and that any comm survives a
// round trip through the kernel's format.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1234 (nginx) S 1 1234 1234 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 98765 1 2\n"), "nginx", 1, uint64(98765))
	f.Add([]byte("7 (a) b (c)) R 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 42 0"), "a) b (c)", 3, uint64(42))
	f.Add([]byte("8 () Z"), ") S 1 (", 0, uint64(0))
	f.Fuzz(func(t *testing.T, raw []byte, comm string, ppid int, start uint64) {
		ParseStat(raw) //nolint:errcheck // must only not panic

		if ppid < 0 {
			ppid = -ppid
		}
		if ppid < 0 { // math.MinInt
			ppid = 0
		}
		line := fmt.Sprintf("4321 (%s) S %d 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 %d 100 200\n", comm, ppid, start)
		s, err := ParseStat([]byte(line))
		if err != nil {
			t.Fatalf("ParseStat(%q): %v", line, err)
		}
		if s.PID != 4321 || s.Comm != comm || s.State != 'S' || s.PPID != ppid || s.StartTime != start {
			t.Fatalf("ParseStat(%q) = %+v", line, s)
		}
	})
}
