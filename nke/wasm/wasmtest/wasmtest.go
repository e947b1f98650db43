// Package wasmtest builds WebAssembly NKEs for tests with the go command
// (GOOS=wasip1 GOARCH=wasm -buildmode=c-shared), so that tests need no
// prebuilt binaries. It is test support: no production package imports
// it (layering_test.go).
package wasmtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrNoToolchain: the go command cannot build wasip1 here; tests skip.
var ErrNoToolchain = errors.New("wasmtest: the go toolchain cannot build GOOS=wasip1 GOARCH=wasm")

// Build builds each package (an import path of this module) into
// dir/NAME.wasm, NAME its last element, and returns the paths by name.
func Build(dir string, pkgs ...string) (map[string]string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoToolchain, err)
	}
	out := map[string]string{}
	for _, p := range pkgs {
		// c-shared takes one main package per build.
		name := p[strings.LastIndex(p, "/")+1:]
		dst := filepath.Join(dir, name+".wasm")
		cmd := exec.Command(gobin, "build", "-buildmode=c-shared", "-o", dst, p)
		cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			if strings.Contains(string(b), "unsupported GOOS/GOARCH") {
				return nil, fmt.Errorf("%w: %s", ErrNoToolchain, b)
			}
			return nil, fmt.Errorf("wasmtest: go build %s: %v\n%s", p, err, b)
		}
		out[name] = dst
	}
	return out, nil
}
