package builtin

import (
	"strings"
	"testing"
)

func TestModulesAreWellFormed(t *testing.T) {
	names := map[string]bool{}
	for _, m := range Modules {
		if err := m.Check(); err != nil {
			t.Error(err)
		}
		if names[m.Name] {
			t.Errorf("two modules named %s", m.Name)
		}
		names[m.Name] = true
	}
}

func TestParseList(t *testing.T) {
	ms, err := ParseList("etherecho, com.example.ethlog")
	if err != nil || len(ms) != 2 || ms[0].Name != "etherecho" || ms[1].Name != "ethlog" {
		t.Fatalf("ParseList = %v, %v", ms, err)
	}
	for _, c := range []struct{ in, want string }{
		{"nope", `no built-in NKE "nope" (there are: `},
		{"ethlog,ethlog", "ethlog named twice"},
	} {
		if _, err := ParseList(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseList(%q) = %v, want %q", c.in, err, c.want)
		}
	}
}
