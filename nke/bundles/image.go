package bundles

// Where the guest image keeps bundles and its boot preference file:
// nkevm image copies every bundle of this folder, WebAssembly modules
// built, to ImageDir, and the preference file `make run NKES=...` chose
// (else boot.nkes) to ImageBootFile; the guest loads from there.
const (
	ImageDir      = "/lib/nke"
	ImageBootFile = "/etc/nke/boot.nkes"
)

// WasmExamples is where a bundle's WebAssembly module is built from: a
// manifest naming X.wasm gets the main package WasmExamples/X, built with
// GOOS=wasip1 (make wasm does the same for out/wasm).
const WasmExamples = "nke/wasm/examples"
