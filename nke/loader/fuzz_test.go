package loader

import (
	"strings"
	"testing"

	"github.com/nke-harness/nke/nke"
	"github.com/nke-harness/nke/nke/bundles"
)

// FuzzParsePrefs: any file gives well-formed prefs or an error naming
// the file and a line.
func FuzzParsePrefs(f *testing.F) {
	f.Add(bundles.Boot())
	f.Add([]byte("com.example.ethlog\nIPFirewall.nke block in proto icmp\n# x\n"))
	f.Add([]byte("a\na\n/b\n"))
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
