// Small helpers: private binary copies, CPU shares, process facts, medians.

package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

// privateCopy copies a file of the gateway's into dir/private/name: the command lookPath
// finds in PATH (when not ""), else fallback.
func privateCopy(dir, name, lookPath, fallback string) (string, error) {
	src := fallback
	if lookPath != "" {
		if p, err := execLookPath(lookPath); err == nil {
			src = p
		}
	}
	dst := filepath.Join(dir, "private", name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	if err := copyFile(src, dst); err != nil {
		return "", fmt.Errorf("copying %s: %w", src, err)
	}
	return dst, nil
}

// maxWorkerShare is the busiest worker's largest share of the workers' CPU in a valid side;
// maxAttempts is how many times a side is measured to get one.
const (
	maxWorkerShare = 0.75
	maxAttempts    = 4
)

// busiestShare is the largest share of one process in the CPU the processes used between two
// samples (schedstat, 0 when unknown).
func busiestShare(a, b cpuSample) float64 {
	var total, top float64
	for p, n1 := range b.nanos {
		if n0, ok := a.nanos[p]; ok && n1 >= n0 {
			d := float64(n1 - n0)
			total += d
			top = max(top, d)
		}
	}
	if total == 0 {
		return 0
	}
	return top / total
}

func uniq(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

func exeOf(pid int) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "?"
	}
	return p
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var errNotFound = errors.New("not found")

func execLookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errNotFound
}

func machineNote() string {
	model := ""
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				if _, v, ok := strings.Cut(l, ":"); ok {
					model = strings.TrimSpace(v)
				}
				break
			}
		}
	}
	var u syscall.Utsname
	kernel := ""
	if syscall.Uname(&u) == nil {
		var sb strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			sb.WriteByte(byte(c))
		}
		kernel = sb.String()
	}
	return fmt.Sprintf("%d vCPU (%s), Linux %s", runtime.NumCPU(), model, kernel)
}

// load1 returns the 1-minute load average and remembers the highest seen.
func (b *bench) load1() float64 {
	var v float64
	fmt.Sscan(benchkit.LoadAvg(), &v) //nolint:errcheck
	if v > b.maxLoad {
		b.maxLoad = v
	}
	return v
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

// errorLines picks the lines of wrk/h2load output that explain errors.
func errorLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		for _, p := range []string{"Socket errors", "Non-2xx", "requests:", "status codes:"} {
			if strings.HasPrefix(l, p) {
				keep = append(keep, l)
			}
		}
	}
	return strings.Join(keep, "; ")
}
