package bundle

import (
	"fmt"
	"strconv"
	"strings"
)

// Kext version strings (Apple's OSKextParseVersionString): one to three
// dot-separated numbers, major 0-9999, minor and revision 0-99, then an
// optional stage and its number: d (development), a (alpha), b (beta),
// fc (final candidate), 1-255. A version without a stage is a release and
// sorts after every stage of the same numbers: 1.0d1 < 1.0a1 < 1.0b1 <
// 1.0fc1 < 1.0 = 1.0.0.

type version struct {
	nums  [3]int
	stage int // 0 d, 1 a, 2 b, 3 fc, 4 release
	n     int
}

var stages = []string{"fc", "d", "a", "b"} // fc before the one-letter ones when parsing

var stageRank = map[string]int{"d": 0, "a": 1, "b": 2, "fc": 3}

func parseVersion(s string) (version, error) {
	v := version{stage: 4}
	if s == "" {
		return v, fmt.Errorf("empty version")
	}
	rest := s
	for _, st := range stages {
		if i := strings.Index(rest, st); i >= 0 {
			num := rest[i+len(st):]
			n, err := strconv.Atoi(num)
			if err != nil || n < 1 || n > 255 || num[0] == '+' || num[0] == '-' {
				return v, fmt.Errorf("version %q: stage %s wants a number 1 to 255 after it", s, st)
			}
			v.stage, v.n = stageRank[st], n
			rest = rest[:i]
			break
		}
	}
	parts := strings.Split(rest, ".")
	if len(parts) > 3 {
		return v, fmt.Errorf("version %q: at most three numbers (major.minor.revision)", s)
	}
	limits := [3]int{9999, 99, 99}
	for i, p := range parts {
		if p == "" || len(p) > 4 {
			return v, fmt.Errorf("version %q: want numbers like 1.2.3 or 1.2.3d4", s)
		}
		for _, c := range p {
			if c < '0' || c > '9' {
				return v, fmt.Errorf("version %q: want numbers like 1.2.3 or 1.2.3d4", s)
			}
		}
		n, _ := strconv.Atoi(p)
		if n > limits[i] {
			return v, fmt.Errorf("version %q: part %d is %d, at most %d", s, i+1, n, limits[i])
		}
		v.nums[i] = n
	}
	return v, nil
}

func (a version) compare(b version) int {
	for i := range a.nums {
		if c := cmpInt(a.nums[i], b.nums[i]); c != 0 {
			return c
		}
	}
	if c := cmpInt(a.stage, b.stage); c != 0 {
		return c
	}
	return cmpInt(a.n, b.n)
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// CheckVersion reports whether s is a well-formed kext version.
func CheckVersion(s string) error {
	_, err := parseVersion(s)
	return err
}

// CompareVersions orders two kext versions: -1 if a is older than b, 0 if
// they are the same version (1.0 and 1.0.0 are), +1 if a is newer.
func CompareVersions(a, b string) (int, error) {
	va, err := parseVersion(a)
	if err != nil {
		return 0, err
	}
	vb, err := parseVersion(b)
	if err != nil {
		return 0, err
	}
	return va.compare(vb), nil
}

// Satisfies reports whether a bundle of version have, compatible back to
// compatible (its OSBundleCompatibleVersion), satisfies a dependant asking
// for want: Apple's rule is compatible <= want <= have. A bundle without
// OSBundleCompatibleVersion is not a library and satisfies nobody (as
// with kexts). Malformed versions never satisfy.
func Satisfies(have, compatible, want string) bool {
	if compatible == "" {
		return false
	}
	if c, err := CompareVersions(want, have); err != nil || c > 0 {
		return false
	}
	c, err := CompareVersions(compatible, want)
	return err == nil && c <= 0
}
