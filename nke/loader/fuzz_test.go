package loader

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundles"
)

// FuzzParsePrefs: any file gives well-formed prefs or an error naming
// the file and a line.
func FuzzParsePrefs(f *testing.F) {
	f.Add(bundles.Boot())
	seeds, _ := filepath.Glob("testdata/prefs/*")
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		prefs, err := ParsePrefs("f", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f:") {
				t.Fatalf("error %q does not name the file and line", err)
			}
			return
		}
		seen := map[string]bool{}
		for _, p := range prefs {
			if nke.CheckName(p.Name) != nil || seen[p.Name] || p.Line < 1 || (p.Settings != "") != p.HasSettings {
				t.Fatalf("bad pref %+v", p)
			}
			seen[p.Name] = true
		}
	})
}
