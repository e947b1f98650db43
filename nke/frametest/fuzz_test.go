package frametest_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	. "github.com/nke-harness/nke/nke/frametest"
)

var writeSeeds = flag.Bool("write-seeds", false, "rewrite testdata/fuzz/FuzzParse from examples()")

// FuzzParse: Parse never panics, fails only with its sentinels, and what
// it parses re-encodes: the re-encoding parses (without error) to the
// same frame, and is byte for byte the input when the input was
// canonical (checksums right, the length Marshal would give).
func FuzzParse(f *testing.F) {
	for _, e := range examples() {
		f.Add(e.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := Parse(b)
		if err != nil && !errors.Is(err, ErrChecksum) {
			for _, s := range []error{ErrTruncated, ErrLength, ErrMalformed} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("Parse: %v wraps no sentinel error", err)
		}
		b2, err2 := fr.Marshal()
		if err2 != nil {
			t.Fatalf("Marshal of a parsed frame: %v\n%+v", err2, fr)
		}
		fr2, err3 := Parse(b2)
		if err3 != nil {
			t.Fatalf("Parse of the re-encoding: %v\n% x", err3, b2)
		}
		if len(b2) != len(b) {
			// Marshal (mdlayher/ethernet) pads the payload to 46 bytes
			// whatever the tags, so a tagged frame up to 60 bytes plus
			// 4 per tag is padded when re-encoded.
			short := 64
			for _, tag := range []any{fr.ServiceVLAN, fr.VLAN} {
				if tag != nil && !reflect.ValueOf(tag).IsNil() {
					short += 4
				}
			}
			if len(b) >= short {
				t.Fatalf("re-encoding of %d bytes is %d", len(b), len(b2))
			}
			return // a runt, padded when re-encoded
		}
		if d := Diff(fr, fr2); d != "" {
			t.Fatalf("re-encoding parses differently (-first +second):\n%s", d)
		}
		if err == nil && !bytes.Equal(b, b2) && !onlyZeroChecksums(b, b2) {
			t.Fatalf("canonical frame re-encoded differently:\n% x\n% x", b, b2)
		}
	})
}

// onlyZeroChecksums reports whether a and b differ only in 16-bit words
// where one holds 0x0000 and the other 0xffff: the two ones' complement
// zeros, which verify alike. (Every checksum Parse checks sits at an even
// offset in the frame.)
func onlyZeroChecksums(a, b []byte) bool {
	for i := 0; i+1 < len(a); i += 2 {
		x, y := uint16(a[i])<<8|uint16(a[i+1]), uint16(b[i])<<8|uint16(b[i+1])
		if x != y && x^y != 0xffff || x != y && x != 0 && y != 0 {
			return false
		}
	}
	return len(a)%2 == 0 || a[len(a)-1] == b[len(b)-1]
}

// TestWriteSeeds regenerates the seed corpus with -write-seeds.
func TestWriteSeeds(t *testing.T) {
	if !*writeSeeds {
		t.Skip("run with -write-seeds to rewrite testdata/fuzz/FuzzParse")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ex := examples()
	names := make([]string, 0, len(ex))
	for n := range ex {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		file := filepath.Join(dir, "seed-"+sanitize(n))
		if err := os.WriteFile(file, fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", ex[n].Bytes()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			b[i] = '-'
		}
	}
	return string(b)
}
