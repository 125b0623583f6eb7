package aggregate

// Label helpers shared with the reporters so that the aggregator's rows and the Prometheus
// labels fold requests the same way.

// Methods are the method names kept as their own row; anything else counts as OtherMethod.
var Methods = [...]string{"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", OtherMethod}

// OtherMethod collects methods not in Methods (PURGE, CONNECT, WebDAV, garbage).
const OtherMethod = "OTHER"

// MethodIndex returns m's index in Methods (case-sensitive, as HTTP methods are).
func MethodIndex(m string) int {
	switch m {
	case "GET":
		return 0
	case "POST":
		return 1
	case "PUT":
		return 2
	case "DELETE":
		return 3
	case "PATCH":
		return 4
	case "HEAD":
		return 5
	case "OPTIONS":
		return 6
	}
	return 7
}

// Method returns m if it is one of Methods, else OtherMethod.
func Method(m string) string { return Methods[MethodIndex(m)] }

// ValidStatus reports whether status is a real HTTP status; anything else (0 = no response,
// or garbage from a bad decode) counts as "no valid response".
func ValidStatus(status int) bool { return status >= 100 && status <= 599 }

// NoHost is the host row for requests without a Host; InvalidHost for unusable ones.
const (
	NoHost      = "{none}"
	InvalidHost = "{invalid}"
	maxHostLen  = 253 // the longest DNS name
)

// AppendHost appends the host's row name to dst: lower-cased, characters outside
// [a-z0-9.:_[]-] replaced by '_' (so it is printable ASCII, safe in labels and logs), and
// bounded. It does not allocate when dst has room for maxHostLen bytes.
func AppendHost(dst []byte, host string) []byte {
	switch {
	case host == "":
		return append(dst, NoHost...)
	case len(host) > maxHostLen:
		return append(dst, InvalidHost...)
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '.', c == '-', c == ':', c == '[', c == ']', c == '_':
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		default:
			c = '_'
		}
		dst = append(dst, c)
	}
	return dst
}
