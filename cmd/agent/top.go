package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os/signal"
	"syscall"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// top polls a running agent's /stats and redraws a table: what `make demo` shows.
func top(args []string) int {
	fs := flag.NewFlagSet("top", flag.ContinueOnError)
	interval := fs.Duration("i", time.Second, "refresh interval")
	count := fs.Int("n", 0, "stop after N refreshes (0: until Ctrl-C)")
	plain := fs.Bool("plain", false, "do not clear the screen between refreshes")
	title := fs.String("title", "", "what the agent watches, shown in the header (e.g. \"real Kong 3.8.1\")")
	url := "http://127.0.0.1:9464/stats"
	var rest []string
	for _, a := range args {
		if len(a) > 0 && a[0] != '-' && len(rest) == 0 && fs.NArg() == 0 && (len(a) > 4 && a[:4] == "http") {
			url = a
			continue
		}
		rest = append(rest, a)
	}
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	client := &http.Client{Timeout: 3 * time.Second}
	for i := 0; *count == 0 || i < *count; i++ {
		var out string
		s, err := fetchStats(ctx, client, url)
		if err != nil {
			out = fmt.Sprintf("kong-watcher: %s: %v (is the agent running?)\n", url, err)
		} else {
			out = report.Table(s)
		}
		if !*plain {
			fmt.Print("\033[H\033[2J")
		}
		head := "kong-watcher agent at " + url
		if *title != "" {
			head += " on " + *title
		}
		fmt.Printf("%s   %s\n\n%s", head, time.Now().Format(time.TimeOnly), out)
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(*interval):
		}
	}
	return 0
}

func fetchStats(ctx context.Context, c *http.Client, url string) (v1alpha1.Stats, error) {
	var s v1alpha1.Stats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return s, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("decoding stats: %w", err)
	}
	return s, nil
}
