// Command nkevm fetches what the NKE guest needs and boots it under QEMU.
//
//	nkevm kernel              ensure the guest kernel, print its path
//	nkevm image               build the initramfs, print its path
//	nkevm run [-- ARGS]       install QEMU if needed, fetch, build, boot
//	nkevm qemu-args [-- ARGS] print the QEMU command line run would use
//	nkevm vmtest-env          prepare everything, print shell exports for the VM tests
//	nkevm deps race|vmtest    install missing host tools for go test -race or the VM tests
//
// Progress goes to stderr; stdout carries only the requested output.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nke-harness/nke/initramfs"
	"github.com/nke-harness/nke/kernel/ctlchan"
	"github.com/nke-harness/nke/tools/hostvm"
)

const usage = `usage: nkevm <command> [flags] [-- init args]

commands:
  kernel      ensure the guest kernel (downloaded and cached on first use), print its path
  image       build the initramfs, print its path
  run         install QEMU if needed, get the kernel, build the image, boot; Ctrl-C powers off
  qemu-args   print the QEMU command line that run would use
  vmtest-env  prepare QEMU, the VM tests' network tools, kernel and image; print shell exports for go test ./vmtests/...
  deps SET    install missing host tools (apt-get, as root): race (C compiler for go test -race) or vmtest

flags:
`

type flags struct {
	kernel, qemu, init, image, accel string
	append                           string
	nkes                             string
	env                              multi
	httpPort, echoPort, cpus, memMB  int
	initArgs                         []string
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, " ") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	f := &flags{}
	fs := newFlagSet(f)
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-") {
		fs.Usage()
		if len(os.Args) == 2 && (os.Args[1] == "-h" || os.Args[1] == "-help" || os.Args[1] == "--help") {
			os.Exit(0)
		}
		os.Exit(2)
	}
	cmd := os.Args[1]
	if cmd == "deps" { // takes a tool set, none of the VM flags
		if err := cmdDeps(context.Background(), os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "nkevm deps: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if err := parse(fs, f, os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "nkevm %s: %v (nkevm -h lists the flags)\n", cmd, err)
		os.Exit(2)
	}
	var err error
	ctx := context.Background()
	switch cmd {
	case "kernel":
		err = cmdKernel(ctx, f)
	case "image":
		err = cmdImage(ctx, f)
	case "run":
		err = cmdRun(ctx, f)
	case "qemu-args":
		err = cmdQEMUArgs(ctx, f)
	case "vmtest-env":
		err = cmdVMTestEnv(ctx, f)
	default:
		fmt.Fprintf(os.Stderr, "nkevm: unknown command %q\n\n", cmd)
		fs.Usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "nkevm %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func newFlagSet(f *flags) *flag.FlagSet {
	fs := flag.NewFlagSet("nkevm", flag.ContinueOnError)
	// Parse errors are reported once, by main; Usage still prints.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fs.SetOutput(os.Stderr)
		fmt.Fprint(os.Stderr, usage)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	fs.StringVar(&f.kernel, "kernel", "", "bzImage to boot (default $"+hostvm.EnvKernel+", else the cached Debian cloud kernel)")
	fs.StringVar(&f.qemu, "qemu", "", "QEMU binary (default $"+hostvm.EnvQEMU+", else qemu-system-x86_64 on PATH)")
	fs.StringVar(&f.init, "init", initramfs.DefaultMain, "Go main package built as the guest's /init")
	fs.StringVar(&f.image, "image", "", "initramfs output path (default "+initramfs.DefaultOutput+" in the repository)")
	fs.StringVar(&f.accel, "accel", "auto", "auto, kvm or tcg")
	fs.StringVar(&f.append, "append", "", "extra kernel parameters, e.g. loglevel=7 (default $"+hostvm.EnvAppend+")")
	fs.StringVar(&f.nkes, "nkes", "", "the NKEs to load at boot: a preference file, or bundles comma-separated, each with optional settings (default $NKES, else nke/bundles/boot.nkes)")
	fs.Var(&f.env, "env", "KEY=VALUE for the guest init's environment (repeatable)")
	fs.IntVar(&f.httpPort, "http-port", 0, fmt.Sprintf("host port for guest :%d (default $%s, else %d)", hostvm.GuestHTTPPort, hostvm.EnvHTTPPort, hostvm.DefaultHTTPPort))
	fs.IntVar(&f.echoPort, "echo-port", 0, fmt.Sprintf("host port for guest :%d (default $%s, else %d)", hostvm.GuestEchoPort, hostvm.EnvEchoPort, hostvm.DefaultEchoPort))
	fs.IntVar(&f.cpus, "smp", hostvm.DefaultCPUs, "guest CPUs")
	fs.IntVar(&f.memMB, "m", hostvm.DefaultMemoryMB, "guest memory in MiB")
	return fs
}

func parse(fs *flag.FlagSet, f *flags, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	f.initArgs = fs.Args()
	if i := len(args) - len(f.initArgs) - 1; len(f.initArgs) > 0 && (i < 0 || args[i] != "--") {
		return fmt.Errorf("unexpected argument %q; init arguments go after --", f.initArgs[0])
	}
	if f.append == "" {
		f.append = os.Getenv(hostvm.EnvAppend)
	}
	if f.nkes == "" {
		f.nkes = os.Getenv("NKES")
	}
	var err error
	if f.httpPort == 0 {
		if f.httpPort, err = hostvm.PortFromEnv(hostvm.EnvHTTPPort, hostvm.DefaultHTTPPort); err != nil {
			return err
		}
	}
	if f.echoPort == 0 {
		f.echoPort, err = hostvm.PortFromEnv(hostvm.EnvEchoPort, hostvm.DefaultEchoPort)
	}
	return err
}

func cmdKernel(ctx context.Context, f *flags) error {
	k, err := kernel(ctx, f)
	if err != nil {
		return err
	}
	fmt.Println(k.Path)
	return nil
}

func cmdImage(ctx context.Context, f *flags) error {
	img, err := image(ctx, f)
	if err != nil {
		return err
	}
	fmt.Println(img.Path)
	return nil
}

func cmdRun(ctx context.Context, f *flags) error {
	for _, p := range []struct {
		proto hostvm.Proto
		port  int
		env   string
	}{
		{hostvm.TCP, f.httpPort, hostvm.EnvHTTPPort},
		{hostvm.TCP, f.echoPort, hostvm.EnvEchoPort},
		{hostvm.UDP, f.echoPort, hostvm.EnvEchoPort},
	} {
		if err := hostvm.CheckPortFree(p.proto, p.port, p.env); err != nil {
			return err
		}
	}
	opts, args, err := commandLine(ctx, f, true)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "nke: booting (%s, %d CPUs, %d MiB); once ready: curl http://127.0.0.1:%d/ and nc 127.0.0.1 %d; Ctrl-C powers the guest off\n",
		opts.Accel, opts.CPUs, opts.MemoryMB, f.httpPort, f.echoPort)
	// The host end of the control channel: nkectl's socket beside
	// QEMU's, served for as long as QEMU runs.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	served := make(chan struct{})
	if qsock := hostvm.ControlSocketIn(args); qsock != "" {
		sock := filepath.Join(filepath.Dir(qsock), ctlchan.SocketName)
		// The VM's runtime directory goes with the VM.
		defer os.RemoveAll(filepath.Dir(qsock))
		go func() {
			defer close(served)
			err := hostvm.ServeControl(cctx, qsock, sock, nil, func() {
				fmt.Fprintf(os.Stderr, "nke: control channel at %s: out/nkectl stat, out/nkectl load nke/bundles/IPFirewall.nke, out/nkectl -h\n", sock)
			})
			if err != nil && cctx.Err() == nil && !errors.Is(err, ctlchan.ErrUpstreamLost) {
				fmt.Fprintf(os.Stderr, "nke: control channel: %v\n", err)
			}
			os.Remove(sock)
		}()
	} else {
		close(served)
	}
	_, err = hostvm.Run(ctx, hostvm.RunConfig{Args: args, Stdin: os.Stdin})
	cancel()
	<-served
	return err
}

// toolSets are the host tool sets nkevm deps installs.
var toolSets = map[string]hostvm.Tools{"race": hostvm.RaceTools, "vmtest": hostvm.VMTestTools}

func cmdDeps(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want one tool set, race or vmtest (got %q)", args)
	}
	ts, ok := toolSets[args[0]]
	if !ok {
		return fmt.Errorf("unknown tool set %q; use race or vmtest", args[0])
	}
	return hostvm.EnsureTools(ctx, os.Stderr, ts)
}

func cmdQEMUArgs(ctx context.Context, f *flags) error {
	_, args, err := commandLine(ctx, f, false)
	if err != nil {
		return err
	}
	fmt.Println(shellJoin(args))
	return nil
}

// commandLine prepares QEMU (installing it if install is set), the kernel
// and the image, and renders the QEMU command line.
func commandLine(ctx context.Context, f *flags, install bool) (hostvm.Options, []string, error) {
	qemu, err := qemuPath(ctx, f, install)
	if err != nil {
		return hostvm.Options{}, nil, err
	}
	opts, _, err := options(ctx, f, qemu)
	if err != nil {
		return hostvm.Options{}, nil, err
	}
	args, err := opts.Args()
	return opts, args, err
}

// cmdVMTestEnv prints exports both for hugelgupf/vmtest (VMTEST_*) and
// for tests that build their command line with hostvm (NKE_*).
func cmdVMTestEnv(ctx context.Context, f *flags) error {
	qemu, err := qemuPath(ctx, f, true)
	if err != nil {
		return err
	}
	if err := hostvm.EnsureTools(ctx, os.Stderr, hostvm.VMTestTools); err != nil {
		return err
	}
	opts, k, err := options(ctx, f, qemu)
	if err != nil {
		return err
	}
	vmtestQEMU, err := opts.VMTestQEMU()
	if err != nil {
		return err
	}
	// vmtest adds its own init arguments, so only the kernel's part.
	appendArgs, err := hostvm.Options{Accel: opts.Accel, Append: opts.Append}.KernelCmdline()
	if err != nil {
		return err
	}
	for _, kv := range [][2]string{
		{hostvm.EnvQEMU, qemu},
		{hostvm.EnvKernel, opts.Kernel},
		{"NKE_KERNEL_MODULES", k.ModulesDir()},
		{"NKE_INITRAMFS", opts.Initramfs},
		{"VMTEST_QEMU", vmtestQEMU},
		{"VMTEST_KERNEL", opts.Kernel},
		{"VMTEST_KERNEL_APPEND", appendArgs},
		{"VMTEST_INITRAMFS", opts.Initramfs},
	} {
		fmt.Printf("export %s=%s\n", kv[0], shellQuote(kv[1]))
	}
	return nil
}

// options gathers kernel and image and applies the flags.
func options(ctx context.Context, f *flags, qemu string) (hostvm.Options, hostvm.Kernel, error) {
	k, err := kernel(ctx, f)
	if err != nil {
		return hostvm.Options{}, k, err
	}
	img, err := image(ctx, f)
	if err != nil {
		return hostvm.Options{}, k, err
	}
	o := hostvm.DefaultOptions(qemu, k.Path, img.Path, f.httpPort, f.echoPort)
	switch f.accel {
	case "auto":
		if accel, why := hostvm.PickAccel(); why != nil {
			fmt.Fprintf(os.Stderr, "nke: KVM not usable (%v); using TCG\n", why)
		} else {
			o.Accel = accel
		}
	case "kvm", "tcg":
		o.Accel = hostvm.Accel(f.accel)
	default:
		return o, k, fmt.Errorf("-accel %q: use auto, kvm or tcg", f.accel)
	}
	o.CPUs, o.MemoryMB = f.cpus, f.memMB
	if o.Append, err = hostvm.SplitCmdline(f.append); err != nil {
		return o, k, err
	}
	o.InitEnv = f.env
	o.InitArgs = f.initArgs
	return o, k, nil
}

func kernel(ctx context.Context, f *flags) (hostvm.Kernel, error) {
	if f.kernel != "" {
		k, err := hostvm.KernelFromPath(f.kernel)
		if err != nil {
			return k, fmt.Errorf("-kernel: %w", err)
		}
		return k, nil
	}
	return hostvm.EnsureKernel(ctx, os.Stderr)
}

// image builds the initramfs with the bundles and the boot preference
// file (-nkes).
func image(ctx context.Context, f *flags) (initramfs.Image, error) {
	root, err := initramfs.ModuleDir(ctx, "")
	if err != nil {
		return initramfs.Image{}, err
	}
	prefs, err := hostvm.BootPrefs(root, f.nkes)
	if err != nil {
		return initramfs.Image{}, fmt.Errorf("-nkes: %w", err)
	}
	files, wasm, err := hostvm.ImageBundles(root, prefs)
	if err != nil {
		return initramfs.Image{}, err
	}
	return initramfs.Build(ctx, initramfs.Config{ModuleDir: root, Main: f.init, Output: f.image, Files: files, Wasm: wasm, Progress: os.Stderr})
}

// qemuPath is -qemu if given, else $NKE_QEMU or PATH, installing QEMU
// when allowed.
func qemuPath(ctx context.Context, f *flags, install bool) (string, error) {
	switch {
	case f.qemu != "":
		path, err := hostvm.ResolveQEMU(f.qemu)
		if err != nil {
			return "", fmt.Errorf("-qemu: %w", err)
		}
		return path, nil
	case install:
		return hostvm.EnsureQEMU(ctx, os.Stderr)
	}
	return hostvm.FindQEMU()
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// shellQuote quotes s for POSIX sh when it holds anything but safe
// characters.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=+,./:@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
