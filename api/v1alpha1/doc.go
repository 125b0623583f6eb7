// Package v1alpha1 is kong-watcher's public contract: the label and annotation keys the
// webhook and the agent read and write, the Event reasons they record, and the Stats JSON
// document the agent serves on /stats and writes to the kong-watcher.io/stats annotation.
//
// Everything here is consumed by users (kubectl, dashboards, scripts), so renaming a key or a
// JSON field is a breaking change.
package v1alpha1
