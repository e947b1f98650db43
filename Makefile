# NKE Harness. `make run` boots the guest, `make test` runs every test.
# nkevm (tools/nkevm) does the work: it installs QEMU if missing, caches
# the guest kernel outside the repository and builds out/initramfs.cpio.
# Pass nkevm flags through ARGS, e.g. make run ARGS='-append loglevel=7'.

GO    ?= go
NKEVM := $(GO) run ./tools/nkevm
ARGS  ?=

.PHONY: run test unit vmtest bench image kernel clean clean-cache

run:
	$(NKEVM) run $(ARGS)

test: unit
	$(MAKE) vmtest

unit:
	$(GO) test ./...

# The exports come from nkevm (QEMU, kernel, image paths); with
# NKE_VMTEST_REQUIRED=1 a VM test that would skip fails instead.
vmtest:
	@find vmtests -name '*_test.go' 2>/dev/null | grep -q . || \
		{ echo "make vmtest: no VM tests under vmtests/ yet, so nothing was checked in a VM" >&2; exit 1; }
	@set -e; exports=$$($(NKEVM) vmtest-env $(ARGS)); eval "$$exports"; \
		echo "$$exports" | sed 's/^export /vmtest: /' >&2; \
		NKE_VMTEST_REQUIRED=1 $(GO) test -count=1 ./vmtests/...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

image:
	$(NKEVM) image $(ARGS)

kernel:
	$(NKEVM) kernel $(ARGS)

clean:
	rm -rf out

clean-cache:
	rm -rf "$${NKE_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/nke-harness}"
