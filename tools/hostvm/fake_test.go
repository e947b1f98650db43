package hostvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCmd stands in for apt-get, apt-cache and dpkg-deb.
type fakeCmd struct {
	paths map[string]bool // commands lookPath finds
	// outputs maps "name arg..." to stdout; missing keys fail.
	outputs map[string]string
	// runs maps "name arg0" to a handler; missing keys fail.
	runs  map[string]func(dir string, args []string) error
	calls []string
}

func (f *fakeCmd) run(_ context.Context, dir string, progress io.Writer, name string, args ...string) error {
	call := strings.Join(append([]string{name}, args...), " ")
	f.calls = append(f.calls, call)
	fmt.Fprintf(progress, "fake: %s\n", call)
	key := name
	if len(args) > 0 {
		key += " " + args[0]
	}
	h, ok := f.runs[key]
	if !ok {
		return fmt.Errorf("fake: %s: exit status 100", call)
	}
	return h(dir, args)
}

func (f *fakeCmd) output(_ context.Context, name string, args ...string) ([]byte, error) {
	call := strings.Join(append([]string{name}, args...), " ")
	f.calls = append(f.calls, call)
	out, ok := f.outputs[call]
	if !ok {
		return nil, fmt.Errorf("fake: %s: exit status 100", call)
	}
	return []byte(out), nil
}

func (f *fakeCmd) lookPath(name string) (string, error) {
	if filepath.IsAbs(name) {
		if st, err := os.Stat(name); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return name, nil
		}
		return "", fmt.Errorf("exec: %q: not an executable file", name)
	}
	if f.paths[name] {
		return "/usr/bin/" + name, nil
	}
	return "", fmt.Errorf("exec: %q: %w", name, errors.ErrUnsupported)
}

// writeBzImage writes a minimal file that passes ValidateKernel.
func writeBzImage(t *testing.T, path string) {
	t.Helper()
	b := make([]byte, 0x400)
	copy(b[bzImageMagicOffset:], bzImageMagic)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
