// Package benchkit is what the project's benchmark commands measure and report the same way,
// so their figures mean the same thing from one section of docs/benchmarks.md to the next:
//
//   - a process's CPU time and memory as the kernel accounts them (/proc/<pid>/stat and
//     /proc/<pid>/status, getrusage), and the conditions of the run (load average, niceness);
//   - latency percentiles and the units the reports print (ms, us, MiB);
//   - rewriting one "## " section of a markdown file in place, leaving the sections other
//     commands write alone.
//
// Users: hack/benchwebhook (make bench-webhook), hack/benchmanager (make bench-manager) and
// test/benchagent (make bench). It lives under test/ so that both hack/ and test/ may import
// it (an internal/ package under either could not serve the other), and it imports the
// standard library only, so the agent benchmark does not link Kubernetes client code for it;
// what only the Kubernetes benchmarks share is in hack/internal/benchenv. Linux only, like
// the benchmarks.
package benchkit
