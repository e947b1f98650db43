package kevent

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzEventJSON: any JSON that decodes into an Event (the kind by name)
// encodes back to JSON that decodes to the same Event: what nkectl
// events --json prints can be read back.
func FuzzEventJSON(f *testing.F) {
	f.Add([]byte(`{"seq":1,"time":"2026-12-02T08:00:00Z","kind":"link-down","interface":"vtnet0"}`))
	f.Add([]byte(`{"seq":7,"time":"2026-12-02T08:00:00.5Z","kind":"fault","nke":"com.example.ipfw","hook":"inet filters","id":3,"detail":"boom"}`))
	f.Add([]byte(`{"kind":"nope"}`))
	f.Add([]byte(`{"kind":3}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		if err := json.Unmarshal(b, &e); err != nil {
			return
		}
		if e.Kind != 0 && (e.Kind >= numKinds) {
			t.Fatalf("decoded an unknown kind %d from %s", e.Kind, b)
		}
		out, err := json.Marshal(e)
		if err != nil {
			return // a time outside what JSON can carry
		}
		var back Event
		if err := json.Unmarshal(out, &back); err != nil {
			if e.Kind == 0 {
				return // kind(0) has no name to read back
			}
			t.Fatalf("%s does not decode: %v", out, err)
		}
		if d := cmp.Diff(e, back); d != "" {
			t.Fatalf("round trip of %s (-first +second):\n%s", b, d)
		}
	})
}
