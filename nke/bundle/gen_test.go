package bundle

import (
	"flag"
	"os"
	"testing"
)

var genSeeds = flag.Bool("genseeds", false, "write testdata/*.tar seeds for FuzzUnpack")

// TestGenSeeds writes the archive seeds with -genseeds.
func TestGenSeeds(t *testing.T) {
	if !*genSeeds {
		t.Skip("run with -genseeds to write testdata/*.tar")
	}
	b := testBundle(t)
	a, err := Pack(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("testdata/min.tar", a, 0o644); err != nil {
		t.Fatal(err)
	}
	sym := archive(t, entry{name: "A.nke/Contents/Info.plist", body: string(readTestdata(t, "full.plist"))}, entry{name: "A.nke/Contents/l", typ: '2', link: "/x"})
	if err := os.WriteFile("testdata/symlink.tar", sym, 0o644); err != nil {
		t.Fatal(err)
	}
}
