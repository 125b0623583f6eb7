// Command kong-watcher-agent is the sidecar: it finds the gateway's nginx processes, attaches
// its eBPF probes and reports what it sees (logs, /stats, /metrics). Configuration comes from
// the environment (api/agentenv; the README's table); agent/app runs it.
//
//	kong-watcher-agent              run the agent
//	kong-watcher-agent top [URL]    show a running agent's /stats as a refreshing table
package main

import (
	"fmt"
	"os"

	"github.com/kong-watcher/kong-watcher/agent/app"
	"github.com/kong-watcher/kong-watcher/api/agentenv"
	"github.com/kong-watcher/kong-watcher/internal/version"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "top":
			os.Exit(top(os.Args[2:]))
		case "version", "--version":
			fmt.Println(version.Version)
			return
		case "-h", "--help", "help":
			fmt.Fprint(os.Stderr, usage())
			return
		default:
			fmt.Fprintf(os.Stderr, "unknown command %q\n%s", os.Args[1], usage())
			os.Exit(2)
		}
	}
	os.Exit(app.Main(os.Args[1:], app.OSEnv, os.Stderr))
}

// usage lists every variable the agent reads (api/agentenv.All), so that it stays complete.
func usage() string {
	const indent = "\n                                 "
	vars, line := "", 0
	for i, s := range agentenv.All {
		name := s.Info().Env
		if i > 0 {
			vars += ","
			line++
		}
		if line+1+len(name) > 60 {
			vars += indent
			line = 0
		} else if i > 0 {
			vars += " "
		}
		vars += name
		line += 1 + len(name)
	}
	return `usage:
  kong-watcher-agent             run the agent, configured by the environment:` + indent + vars + `
  kong-watcher-agent top [URL] [-n N] [-i 1s]
                                 show a running agent's stats as a refreshing table
                                 (URL defaults to http://127.0.0.1:9464/stats)
  kong-watcher-agent version
`
}
