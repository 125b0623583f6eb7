// Package version holds the build's version, set by the Makefile's -ldflags.
package version

// Version is the kong-watcher version; the webhook writes it to kong-watcher.io/injected.
var Version = "dev"
