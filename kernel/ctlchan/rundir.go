package ctlchan

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Where VMs keep their control sockets.
const (
	// EnvRuntimeDir overrides RuntimeDir.
	EnvRuntimeDir = "NKE_RUNTIME_DIR"
	// EnvSocket is nkectl's socket, instead of the single running VM's.
	EnvSocket = "NKECTL_SOCKET"
	// SocketName is the multiplexer's socket in a VM's directory.
	SocketName = "nkectl.sock"
)

// RuntimeDir is the directory holding one directory per running VM:
// $NKE_RUNTIME_DIR, else $XDG_RUNTIME_DIR/nke-harness, else
// nke-harness-UID in the temporary directory.
func RuntimeDir() string {
	if d := os.Getenv(EnvRuntimeDir); d != "" {
		return d
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "nke-harness")
	}
	return filepath.Join(os.TempDir(), "nke-harness-"+strconv.Itoa(os.Getuid()))
}

// MakeVMDir creates the directory of VM name (mode 0700, as is
// RuntimeDir) and returns it. An existing RuntimeDir that others can
// enter is refused: anyone there could reach the VM's control socket.
func MakeVMDir(name string) (string, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("ctlchan: VM name %q: want a plain file name", name)
	}
	base := RuntimeDir()
	for _, d := range []string{base, filepath.Join(base, name)} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("ctlchan: runtime directory: %w", err)
		}
		fi, err := os.Lstat(d)
		if err != nil {
			return "", fmt.Errorf("ctlchan: runtime directory: %w", err)
		}
		if !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("ctlchan: runtime directory %s is %v, not a directory only its owner can enter: remove it or chmod 700 it", d, fi.Mode())
		}
	}
	return filepath.Join(base, name), nil
}

// ListenUnix listens on a unix socket at path with mode 0600, replacing a
// stale socket there (one nobody accepts on).
func ListenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("ctlchan: %s exists and is not a socket: remove it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("ctlchan: %s: a VM is already serving there", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("ctlchan: %w", err)
	}
	// The directory is 0700, so nobody else can connect before this.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("ctlchan: %w", err)
	}
	return ln, nil
}

// ErrNoVM is no running VM to talk to.
var ErrNoVM = errors.New("no VM is running: start one with make run")

// FindSocket returns $NKECTL_SOCKET, else the socket of the single VM
// running under RuntimeDir (one that accepts a connection). Several
// running VMs is an error that lists them.
func FindSocket() (string, error) {
	if s := os.Getenv(EnvSocket); s != "" {
		return s, nil
	}
	paths, _ := filepath.Glob(filepath.Join(RuntimeDir(), "*", SocketName))
	var live []string
	for _, p := range paths {
		c, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			c.Close()
			live = append(live, p)
		} else if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, os.ErrNotExist) {
			live = append(live, p) // not stale for sure: let the caller's dial say why
		}
	}
	switch len(live) {
	case 0:
		return "", fmt.Errorf("%w (no socket in %s)", ErrNoVM, RuntimeDir())
	case 1:
		return live[0], nil
	}
	return "", fmt.Errorf("%d VMs are running (%v): choose one with --socket PATH or %s", len(live), live, EnvSocket)
}
