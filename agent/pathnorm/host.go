package pathnorm

// MarkCut appends Truncated to dst when cut: for a host row name or label (as
// aggregate.AppendHost builds it) whose host holds only the first bytes of what the client
// sent. The marker cannot occur in a real host row (AppendHost turns braces into '_'), so a
// cut host never reads as, or merges with, a real host that happens to be its prefix. It
// does not allocate when dst has room for len(Truncated) more bytes.
func MarkCut(dst []byte, cut bool) []byte {
	if cut {
		dst = append(dst, Truncated...)
	}
	return dst
}

// Host returns host, with Truncated appended when cut (see MarkCut), for log fields.
func Host(host string, cut bool) string {
	if cut {
		return host + Truncated
	}
	return host
}
