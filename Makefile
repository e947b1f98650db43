# NKE Harness. `make run` boots the guest, `make test` runs every test.
# nkevm (tools/nkevm) does the work: it installs QEMU if missing, caches
# the guest kernel outside the repository and builds out/initramfs.cpio.
# Pass nkevm flags through ARGS, e.g. make run ARGS='-append loglevel=7'.

GO    ?= go
NKEVM := out/nkevm
ARGS  ?=
# The NKEs the guest loads at boot: a preference file or a comma-separated
# list, e.g. make run NKES='com.example.ipfw block in proto icmp,com.example.tcplog'
# (default nke/bundles/boot.nkes; docs/loader.md has the format).
NKES  ?=
export NKES
# Which VM tests: go test -run and -skip patterns, passed verbatim ($ and
# | included), e.g. make vmtest VMTEST_RUN=TestTapMTU; VMTESTFLAGS holds
# other go test flags, e.g. -v.
VMTEST_RUN  ?=
VMTEST_SKIP ?=
VMTESTFLAGS ?=
# Packages with goroutines sharing memory: their tests also run under -race.
RACE  := ./nke/mbuf/... ./nke/examples/... ./nke/builtin/... ./kernel/hook/... ./kernel/ifnet/... ./kernel/netstack/... ./kernel/capture/... ./kernel/kerneltest/... ./kernel/services/... ./kernel/socket/... ./kernel/sockfilter/... ./kernel/guest/... ./kernel/kctl/... ./kernel/kevent/... ./kernel/ctlchan/... ./nke/loader/... ./tools/nkectl/... ./virtio/...

.PHONY: all nkectl wasm run test unit lockcheck vmtest bench image kernel clean clean-cache $(NKEVM)

# make alone builds the host tools and the WebAssembly examples.
all: $(NKEVM) nkectl wasm

# Built, not go run: Ctrl-C then ends make quietly with nkevm's own status.
# No VCS stamp: in another user's checkout git refuses to report it, and
# go build would stop there.
$(NKEVM):
	@$(GO) build -buildvcs=false -o $@ ./tools/nkevm

run: $(NKEVM) nkectl
	$(NKEVM) run $(ARGS)

# The host's NKE tool (nkectl -h): load, unload, stat, ctl, events, capture.
nkectl:
	@$(GO) build -buildvcs=false -o out/nkectl ./tools/nkectl

test: unit
	$(MAKE) vmtest

# Without a C compiler Go builds with CGO_ENABLED=0, where the runtime's
# deadlock detector works and can end a test's fake process: the host
# tools' tests run that way too. -race needs cgo: nkevm deps race installs
# gcc and libc6-dev (apt-get, as root) or says what to run.
unit: $(NKEVM) lockcheck
	$(GO) vet ./...
	$(GO) test ./...
	CGO_ENABLED=0 $(GO) test ./tools/...
	$(NKEVM) deps race
	$(GO) test -race $(RACE)

# gVisor's checklocks analyzer (a go.mod tool) over every package: fields
# annotated +checklocks are only touched with their lock held, functions
# annotated so only called with it. Inference is off: it suggests
# annotations for immutable fields and sentinel errors read under a lock.
# The wasm NKE examples, built with the standard toolchain into out/wasm/.
WASM_EXAMPLES = nke/wasm/examples/wasmfw nke/wasm/examples/udpdrop nke/wasm/examples/trap nke/wasm/examples/loop
wasm:
	@mkdir -p out/wasm
	@for p in $(WASM_EXAMPLES); do \
		GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -o out/wasm/$$(basename $$p).wasm ./$$p || exit 1; \
	done
	@ls -l out/wasm

lockcheck:
	$(GO) vet -vettool=$$($(GO) tool -n checklocks) -inferred=false ./...

# The exports come from nkevm (QEMU, kernel, image paths); with
# NKE_VMTEST_REQUIRED=1 a VM test that would skip fails instead.
vmtest: $(NKEVM)
	@set -e; exports=$$($(NKEVM) vmtest-env $(ARGS)); eval "$$exports"; \
		echo "$$exports" | sed 's/^export /vmtest: /' >&2; \
		NKE_VMTEST_REQUIRED=1 $(GO) test -count=1 -timeout 45m \
			-run '$(value VMTEST_RUN)' -skip '$(value VMTEST_SKIP)' $(VMTESTFLAGS) ./vmtests/...

# Driver, ring, pool and dispatch costs against the device model, then the
# guest's boot time in QEMU (three boots).
bench: $(NKEVM)
	$(GO) test -run '^$$' -bench . -benchmem $$($(GO) list ./... | grep -v /vmtests)
	@set -e; eval "$$($(NKEVM) vmtest-env $(ARGS))"; \
		NKE_VMTEST_REQUIRED=1 $(GO) test -run '^$$' -bench Boot -benchtime 3x ./vmtests/

image: $(NKEVM)
	$(NKEVM) image $(ARGS)

kernel: $(NKEVM)
	$(NKEVM) kernel $(ARGS)

clean:
	rm -rf out

clean-cache:
	rm -rf "$${NKE_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/nke-harness}"
