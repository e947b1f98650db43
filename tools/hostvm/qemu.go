package hostvm

import (
	"context"
	"fmt"
	"io"
	"os"
)

const (
	qemuBinary  = "qemu-system-x86_64"
	qemuPackage = "qemu-system-x86" // Debian package holding qemuBinary
)

// FindQEMU returns $NKE_QEMU if set, else qemu-system-x86_64 from PATH.
// It installs nothing; see EnsureQEMU.
func FindQEMU() (string, error) {
	return realHost().findQEMU()
}

// EnsureQEMU is FindQEMU, but when QEMU is missing and this is a root
// shell on a Debian-family host it installs qemu-system-x86 with apt-get,
// streaming apt's output to progress.
func EnsureQEMU(ctx context.Context, progress io.Writer) (string, error) {
	return realHost().ensureQEMU(ctx, progress)
}

// ResolveQEMU checks a user-supplied QEMU, a path or a command name on
// PATH, and returns its path.
func ResolveQEMU(p string) (string, error) {
	return realHost().resolveQEMU(p)
}

func (h host) resolveQEMU(p string) (string, error) {
	path, err := h.cmd.lookPath(p)
	if err != nil {
		return "", fmt.Errorf("QEMU %s is not an executable (%v); point it at qemu-system-x86_64", p, err)
	}
	return path, nil
}

func (h host) findQEMU() (string, error) {
	if p := os.Getenv(EnvQEMU); p != "" {
		path, err := h.resolveQEMU(p)
		if err != nil {
			return "", fmt.Errorf("%s: %w, or unset it", EnvQEMU, err)
		}
		return path, nil
	}
	p, err := h.cmd.lookPath(qemuBinary)
	if err != nil {
		return "", fmt.Errorf("%s is not on PATH; install QEMU (nkevm run does on Debian as root) or set %s", qemuBinary, EnvQEMU)
	}
	return p, nil
}

func (h host) ensureQEMU(ctx context.Context, progress io.Writer) (string, error) {
	if p, err := h.findQEMU(); err == nil || os.Getenv(EnvQEMU) != "" {
		return p, err
	}
	switch {
	case !h.hasApt():
		return "", fmt.Errorf("%s is not installed: install QEMU for x86_64 with your package manager, or set %s to its path", qemuBinary, EnvQEMU)
	case !h.root:
		return "", fmt.Errorf("%s is not installed: run `sudo apt-get install --no-install-recommends %s`, or set %s to its path", qemuBinary, qemuPackage, EnvQEMU)
	}
	fmt.Fprintf(progress, "nke: %s not found; installing %s with apt-get\n", qemuBinary, qemuPackage)
	if err := h.aptInstall(ctx, progress, qemuPackage); err != nil {
		return "", err
	}
	p, err := h.cmd.lookPath(qemuBinary)
	if err != nil {
		return "", fmt.Errorf("apt-get installed %s but %s is still not on PATH: %w", qemuPackage, qemuBinary, err)
	}
	fmt.Fprintf(progress, "nke: installed %s\n", p)
	return p, nil
}
