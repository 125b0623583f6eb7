// Package pathnorm turns a request URI into a low-cardinality route key, so that /users/123
// and /users/456 count as one row ("/users/{id}") in stats, metrics and annotations.
//
// The rules, in order, applied to the raw $request_uri (nothing is percent-decoded, so an
// encoded "/" or ".." can never change the shape of the result):
//   - "" and anything that is not origin-form, absolute-form or "*" becomes Invalid;
//   - "*" (OPTIONS *) stays "*";
//   - absolute-form ("http://host/p") loses scheme and authority ("/p");
//   - the query string and fragment are dropped;
//   - empty segments ("//") and a trailing "/" are dropped ("/" stays "/");
//   - a segment that looks like data rather than a route word becomes Placeholder: numbers,
//     dates/times/IPs (digits and separators), hex strings of 8+ characters with a digit
//     (UUIDs, hashes, ObjectIds), digit-heavy mixed strings ("INV-2024-0001"), e-mail-ish
//     values, anything percent-encoded, anything with bytes outside printable ASCII, segments
//     longer than MaxSegmentLen, long mixed-case random-looking tokens (see isRandomToken)
//     and runs of 12+ letters and digits whose letter pairs no word would have, lower-case
//     ones included ("qwhzkvtrplmbnxcdfgjsy", base32, base36; see hasGibberish);
//   - version segments ("v1", "v2beta1", "v1.2") are kept, as are ordinary words, words
//     joined into one ("clusterrolebindings") and names ("alice", "kong-watcher");
//   - at most MaxSegments segments and MaxLen bytes are kept; the rest is replaced by one
//     Truncated segment;
//   - a URI that a data path cut (AppendCut, NormaliseCut) inside its path loses its partial
//     last segment to one Truncated segment, so it never reads as a real, shorter path.
//
// MarkCut and Host mark a cut host the same way, for the host rows and labels.
//
// The output is printable ASCII, so it is safe as a Prometheus label value and in logs, and
// Normalise is idempotent: Normalise(Normalise(x)) == Normalise(x).
package pathnorm

import "strings"

const (
	// Placeholder replaces a segment that carries data (an id, a token, ...).
	Placeholder = "{id}"
	// Truncated is the last segment of a path that was cut to MaxSegments / MaxLen.
	Truncated = "{...}"
	// Invalid is the whole result for a URI that is not a path at all.
	Invalid = "{invalid}"
	// Asterisk is the result for "OPTIONS *".
	Asterisk = "*"

	// MaxLen bounds the output length in bytes.
	MaxLen = 128
	// MaxSegments bounds the number of segments kept (Truncated not counted).
	MaxSegments = 12
	// MaxSegmentLen: a longer segment is data, never a route word.
	MaxSegmentLen = 64
)

// Normalise returns the route key of uri. See the package comment for the rules.
func Normalise(uri string) string {
	// Fast path for the common already-normal route ("/", "/health", "/api/v1/users"):
	// the result equals the input, so return it without allocating.
	var buf [MaxLen + len(Truncated) + 1]byte
	out := Append(buf[:0], uri)
	if string(out) == uri {
		return uri
	}
	return string(out)
}

// Append appends the route key of uri to dst and returns the extended slice. It does not
// allocate when dst has room (cap(dst)-len(dst) >= MaxLen), which lets hot paths build map
// keys without garbage.
func Append(dst []byte, uri string) []byte { return appendRoute(dst, uri, false) }

// AppendCut is Append for a URI that may hold only the first bytes of what the client sent
// (cut: a data path kept a bounded prefix). A cut inside the query string or fragment loses
// nothing of the route; a cut inside the path leaves a partial last segment, which could
// read as a real, shorter path ("/users/adm" of "/users/admin/..."), so it is replaced by
// Truncated after the complete segments: the row is marked and never merges with a real path.
func AppendCut(dst []byte, uri string, cut bool) []byte { return appendRoute(dst, uri, cut) }

// NormaliseCut is Normalise for a URI that may have been cut (see AppendCut).
func NormaliseCut(uri string, cut bool) string {
	if !cut {
		return Normalise(uri)
	}
	var buf [MaxLen + len(Truncated) + 1]byte
	return string(appendRoute(buf[:0], uri, true))
}

func appendRoute(dst []byte, uri string, cut bool) []byte {
	if uri == Asterisk && !cut {
		return append(dst, Asterisk...)
	}
	p, rest, ok := stripToPath(uri)
	if !ok {
		return append(dst, Invalid...)
	}
	// Cut before any "?" or "#": the last segment (possibly empty, after a final "/") is
	// partial, and more path may follow.
	partial := cut && !rest
	if partial {
		p = p[:strings.LastIndexByte(p, '/')+1]
	}
	start := len(dst)
	segments := 0
	for {
		for len(p) > 0 && p[0] == '/' {
			p = p[1:]
		}
		if len(p) == 0 {
			break
		}
		end := strings.IndexByte(p, '/')
		if end < 0 {
			end = len(p)
		}
		seg := p[:end]
		p = p[end:]
		if seg == Truncated || segments == MaxSegments {
			// A Truncated segment is only ever produced by us, as the last one; stopping
			// there keeps Normalise idempotent.
			return append(dst, "/"+Truncated...)
		}
		if !keepSegment(seg) {
			seg = Placeholder
		}
		// Every segment but the last must leave room for a later "/{...}" marker.
		after := len(dst) - start + 1 + len(seg)
		if after+len("/"+Truncated) > MaxLen && (after > MaxLen || partial || strings.Trim(p, "/") != "") {
			return append(dst, "/"+Truncated...)
		}
		dst = append(dst, '/')
		dst = append(dst, seg...)
		segments++
	}
	if partial {
		return append(dst, "/"+Truncated...)
	}
	if len(dst) == start {
		dst = append(dst, '/')
	}
	return dst
}

// stripToPath returns the path part of uri (starting with '/'), without query or fragment,
// and whether anything (a query or fragment) followed it.
func stripToPath(uri string) (path string, rest, ok bool) {
	if i := strings.IndexAny(uri, "?#"); i >= 0 {
		uri, rest = uri[:i], true
	}
	if strings.HasPrefix(uri, "/") {
		return uri, rest, true
	}
	// Absolute-form: scheme "://" authority [path].
	i := strings.Index(uri, "://")
	if i <= 0 || !isScheme(uri[:i]) {
		return "", false, false
	}
	after := uri[i+3:]
	j := strings.IndexByte(after, '/')
	if j < 0 {
		// No path: "/", unless the URI was cut inside the authority (then the path is
		// unknown, and a cut caller marks it).
		return "/", rest, true
	}
	return after[j:], rest, true
}

func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return true
}

// keepSegment reports whether seg reads as a route word (kept) rather than data (replaced).
func keepSegment(seg string) bool {
	if seg == Placeholder {
		return true
	}
	if len(seg) > MaxSegmentLen {
		return false
	}
	var lower, upper, digit, hex, other int
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c < 0x21 || c > 0x7e:
			return false // control, space, DEL or non-ASCII: never echo it
		case c == '%' || c == '@' || c == '{' || c == '}' || c == '"' || c == '\\' || c == '<' || c == '>' || c == '`' || c == '|' || c == '^':
			return false // encoded data, e-mail, or characters that make labels/logs ugly
		case '0' <= c && c <= '9':
			digit++
			hex++
		case 'a' <= c && c <= 'z':
			lower++
			if c <= 'f' {
				hex++
			}
		case 'A' <= c && c <= 'Z':
			upper++
			if c <= 'F' {
				hex++
			}
		default:
			other++
		}
	}
	if digit == 0 {
		// Words, camelCase, slugs; a long mixed-case random token or a run of letters no
		// language would write is data.
		return !(len(seg) >= 16 && upper > 0 && lower > 0 && isRandomToken(seg) || hasGibberish(seg))
	}
	if isVersion(seg) {
		return true
	}
	letters := lower + upper
	switch {
	case letters == 0:
		return false // 123, 2024-01-02, 10.0.0.1, 12:30:00
	case hex == len(seg)-countByte(seg, '-') && hex >= 8:
		return false // hex with a digit: UUID, sha, ObjectId
	case len(seg) >= 6 && digit*2 >= digit+letters:
		return false // digit-heavy: INV-2024-0001, 12345abc
	case len(seg) >= 16 && isRandomToken(seg):
		return false
	case hasGibberish(seg):
		return false // base32, base36: k3jd9x0qpl2m7f
	}
	return true
}

// minGibberishLen is the shortest run of letters and digits hasGibberish judges: shorter
// words ("xmlrpc", "kubectl", "svgz") are too few letters to tell a rare word from noise.
const minGibberishLen = 12

// hasGibberish reports whether seg has a run of letters and digits (between separators such
// as "-", "_" and ".") of at least minGibberishLen bytes that reads as random characters
// rather than words: its letter pairs are ones English and URL words hardly use
// (isGibberish). Words joined without separators
// ("clusterrolebindings", "mutatingwebhookconfigurations") keep word-like pairs at every
// position but the joins; a random lowercase token has an unlikely pair at about every other
// position. TestRandomTokensCollapse and TestWordsKept measure both sides.
func hasGibberish(seg string) bool {
	if len(seg) < minGibberishLen {
		return false
	}
	for len(seg) > 0 {
		i := 0
		for i < len(seg) && !isAlnum(seg[i]) {
			i++
		}
		seg = seg[i:]
		j := 0
		for j < len(seg) && isAlnum(seg[j]) {
			j++
		}
		if j >= minGibberishLen && isGibberish(seg[:j]) {
			return true
		}
		seg = seg[j:]
	}
	return false
}

//go:generate go run gen_bigrams.go

// Per-pair scores of isGibberish, by bigramClass: a likely pair (at least twice as likely
// in words as in random letters) scores +1, a plain one 0, a rare one (2..8 times less
// likely) -2, an alien one (8+ times less likely: "qz", "xj", "vk") -4. A letter next to a
// digit scores like a rare pair: words rarely mix them ("oauth2", "x509" once), random
// base32/base36 tokens do at every third position.
const (
	bigramCommon = 'c'
	bigramPlain  = '.'
	bigramRare   = 'r'
	bigramAlien  = 'x'

	scoreCommon = 1
	scoreRare   = -2
	scoreAlien  = -4
	scoreMixed  = -3
	// gibberishScore: a run scoring this or less is random. Real words of 12+ letters score
	// well above it (the lowest measured: "selfsubjectaccessreviews" at -9, none of the
	// 6,400 dictionary words of 12+ letters at -12 or less); random lowercase letters score
	// about -2 per pair.
	gibberishScore = -12
)

// isGibberish judges one run of letters and digits (case-folded).
func isGibberish(run string) bool {
	score := 0
	var prev byte
	for i := 0; i < len(run); i++ {
		c := run[i] | 0x20 // lower-case letters; digits are unchanged
		switch {
		case !isLetter(c):
			if isLetter(prev) {
				score += scoreMixed
			}
		case isLetter(prev):
			switch bigramClass[prev-'a'][c-'a'] {
			case bigramCommon:
				score += scoreCommon
			case bigramRare:
				score += scoreRare
			case bigramAlien:
				score += scoreAlien
			}
		case prev != 0:
			score += scoreMixed // a digit before the letter
		}
		prev = c
	}
	return score <= gibberishScore
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' }

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// isVersion matches v1, v2, v1.2, v2beta1, v1alpha.
func isVersion(seg string) bool {
	if len(seg) < 2 || len(seg) > 12 || (seg[0] != 'v' && seg[0] != 'V') {
		return false
	}
	i := 1
	for i < len(seg) && ('0' <= seg[i] && seg[i] <= '9' || seg[i] == '.' && i > 1) {
		i++
	}
	if i == 1 {
		return false
	}
	rest := seg[i:]
	for _, q := range [...]string{"alpha", "beta", "rc"} {
		if strings.HasPrefix(rest, q) {
			rest = rest[len(q):]
			for len(rest) > 0 && '0' <= rest[0] && rest[0] <= '9' {
				rest = rest[1:]
			}
			break
		}
	}
	return rest == ""
}

// isRandomToken is the entropy heuristic for long segments. Human-made words, camelCase and
// slugs (1) change character class (lower/upper/digit/separator) about once per word, a
// capital that starts a lower-case run being part of the word; (2) have vowels in about 40%
// of their letters; (3) capitalise at most about one letter in four. Random base62/base64
// tokens change class at about half the positions, have vowels in about 19% of their letters (y counted)
// and capitalise half of them. Any one of the three signals clearly on the random side marks
// the segment as a token. TestRandomTokensCollapse and TestWordsKept measure both sides.
func isRandomToken(seg string) bool {
	changes, vowels, upper, letters := 0, 0, 0, 0
	prev := clOther
	for i := 0; i < len(seg); i++ {
		c := class(seg[i])
		// Only changes between adjacent letters/digits count: "-" and "." separate words.
		if i > 0 && c != prev && c != clOther && prev != clOther && !(prev == clUpper && c == clLower) {
			changes++
		}
		prev = c
		switch c {
		case clUpper:
			upper++
			fallthrough
		case clLower:
			letters++
			switch seg[i] | 0x20 {
			case 'a', 'e', 'i', 'o', 'u', 'y':
				vowels++
			}
		}
	}
	mixedCase := upper > 0 && upper < letters
	switch {
	case changes*10 >= (len(seg)-1)*3:
		return true
	case mixedCase && vowels*100 < letters*22:
		return true
	case mixedCase && upper*100 >= letters*35:
		return true
	}
	return false
}

const (
	clLower = iota
	clUpper
	clDigit
	clOther
)

func class(c byte) int {
	switch {
	case 'a' <= c && c <= 'z':
		return clLower
	case 'A' <= c && c <= 'Z':
		return clUpper
	case '0' <= c && c <= '9':
		return clDigit
	}
	return clOther
}

func countByte(s string, b byte) int {
	return strings.Count(s, string(b))
}
