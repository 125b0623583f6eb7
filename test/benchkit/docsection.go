package benchkit

import (
	"os"
	"path/filepath"
	"strings"
)

// NewDocHeader starts a benchmarks file that does not exist yet.
const NewDocHeader = "# Benchmarks\n\nMeasured numbers for kong-watcher; each section says how to reproduce it.\n"

// WriteDocSection replaces the section of the markdown file at path that starts with the line
// heading (such as "## Webhook") and runs up to the next "## " heading, with section (which
// starts with that heading line); without such a section it appends section at the end. Each
// benchmark owns one section of docs/benchmarks.md and keeps the others (written by the other
// benchmarks, or by hand) as they are. Lines inside ``` fences are not headings. The file and
// its folder are created when missing; it is replaced by a rename, so a failed write leaves
// the old one.
func WriteDocSection(path, heading, section string) error {
	data, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	content := string(data)
	if content == "" {
		content = NewDocHeader
	}
	section = strings.TrimRight(section, "\n") + "\n"
	lines := strings.SplitAfter(content, "\n")
	start, end := -1, len(lines)
	inFence := false
	for i, l := range lines {
		trim := strings.TrimRight(l, "\r\n")
		if strings.HasPrefix(trim, "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		if start < 0 && strings.TrimSpace(trim) == heading {
			start = i
			continue
		}
		if start >= 0 && strings.HasPrefix(trim, "## ") {
			end = i
			break
		}
	}
	var out string
	if start < 0 {
		out = strings.TrimRight(content, "\n") + "\n\n" + section
	} else {
		after := strings.Join(lines[end:], "")
		if after != "" {
			section += "\n" // a blank line before the next section
		}
		out = strings.Join(lines[:start], "") + section + after
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(out), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
