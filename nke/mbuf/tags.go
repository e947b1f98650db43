package mbuf

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
)

// Tag table geometry: every packet carries TagSlots tags of up to TagSize
// bytes inline in its first buffer, so tagging never allocates.
const (
	TagSlots = 4
	TagSize  = 32
	// MaxTagNameLen is the longest name TagID accepts.
	MaxTagNameLen = 96
	// MaxTagIDs is how many names TagID registers in a process.
	MaxTagIDs = 1 << 16
)

// Tag errors.
var (
	ErrTagName   = errors.New("mbuf: tag name must be 1..96 printable ASCII characters without spaces")
	ErrTagIDs    = errors.New("mbuf: too many tag ids")
	ErrTagID     = errors.New("mbuf: unknown tag id")
	ErrTagSpace  = errors.New("mbuf: packet's tag table is full")
	ErrTagSize   = fmt.Errorf("mbuf: tag size must be 1..%d bytes", TagSize)
	ErrTagExists = errors.New("mbuf: packet already has a tag of that id and type")
	ErrTagType   = errors.New("mbuf: tag type holds pointers (or is not fixed-size plain data)")
)

// TagIDType identifies the owner of a tag, found by name with TagID (xnu
// mbuf_tag_id_t). Zero is never a valid id.
type TagIDType uint32

type tagSlot struct {
	id   TagIDType
	typ  uint16
	n    uint8  // bytes in use; 0 for a free slot
	goT  uint32 // plainType index of the T TagPut stored, 0 for bytes
	data [TagSize]byte
}

var tagIDs struct {
	mu sync.Mutex
	// +checklocks:mu
	byName map[string]TagIDType
	last   atomic.Uint32 // highest id handed out
}

// TagID returns the tag id for name, registering it on first use (xnu
// mbuf_tag_id_find): the same name always gives the same nonzero id
// within the process. Names are 1..96 printable ASCII characters without
// spaces, like a bundle id ("com.example.myfilter"). Registration
// allocates; finding a registered name does not. It is safe for
// concurrent use.
func TagID(name string) (TagIDType, error) {
	if len(name) < 1 || len(name) > MaxTagNameLen {
		return 0, ErrTagName
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' {
			return 0, ErrTagName
		}
	}
	tagIDs.mu.Lock()
	defer tagIDs.mu.Unlock()
	if id, ok := tagIDs.byName[name]; ok {
		return id, nil
	}
	if len(tagIDs.byName) >= MaxTagIDs {
		return 0, ErrTagIDs
	}
	if tagIDs.byName == nil {
		tagIDs.byName = make(map[string]TagIDType)
	}
	id := TagIDType(len(tagIDs.byName) + 1)
	tagIDs.byName[name] = id
	tagIDs.last.Store(uint32(id))
	return id, nil
}

func validTagID(id TagIDType) bool { return id != 0 && uint32(id) <= tagIDs.last.Load() }

func (m *Mbuf) findTag(id TagIDType, typ uint16) *tagSlot {
	for i := range m.hdr.tags {
		if s := &m.hdr.tags[i]; s.n != 0 && s.id == id && s.typ == typ {
			return s
		}
	}
	return nil
}

// TagAllocate adds a tag of size zeroed bytes to the packet and returns
// them (xnu mbuf_tag_allocate). The bytes live in the packet's first
// buffer: they are valid until TagDelete or the packet is freed, and
// move with the packet header. Errors: ErrTagID for an id TagID did not
// return, ErrTagSize outside 1..TagSize, ErrTagExists when the packet has
// that tag already, ErrTagSpace when all TagSlots are taken.
func (m *Mbuf) TagAllocate(id TagIDType, typ uint16, size int) ([]byte, error) {
	if !validTagID(id) {
		return nil, ErrTagID
	}
	if size < 1 || size > TagSize {
		return nil, ErrTagSize
	}
	var free *tagSlot
	for i := range m.hdr.tags {
		s := &m.hdr.tags[i]
		if s.n == 0 {
			if free == nil {
				free = s
			}
		} else if s.id == id && s.typ == typ {
			return nil, ErrTagExists
		}
	}
	if free == nil {
		return nil, ErrTagSpace
	}
	free.id, free.typ, free.n, free.goT = id, typ, uint8(size), 0
	free.data = [TagSize]byte{}
	return free.data[:size:size], nil
}

// TagFind returns the packet's tag of that id and type (xnu
// mbuf_tag_find). The bytes alias the packet.
func (m *Mbuf) TagFind(id TagIDType, typ uint16) ([]byte, bool) {
	s := m.findTag(id, typ)
	if s == nil {
		return nil, false
	}
	return s.data[:s.n:s.n], true
}

// TagDelete removes the packet's tag of that id and type, if any (xnu
// mbuf_tag_free). Freeing the packet removes all its tags.
func (m *Mbuf) TagDelete(id TagIDType, typ uint16) {
	if s := m.findTag(id, typ); s != nil {
		s.n = 0
	}
}

// Tags is how many tags the packet carries.
func (m *Mbuf) Tags() int {
	k := 0
	for i := range m.hdr.tags {
		if m.hdr.tags[i].n != 0 {
			k++
		}
	}
	return k
}

// TagPut stores v as the packet's tag of that id and type, replacing any
// such tag. T must be fixed-size plain data of 1..TagSize bytes: numbers
// and arrays and structs of them; no pointers, strings, slices, maps,
// interfaces, channels, functions or uintptrs, and no booleans (not every
// byte is a valid bool: use a uint8) (ErrTagType). The check runs once per
// type. Other errors are TagAllocate's.
func TagPut[T any](m *Mbuf, id TagIDType, typ uint16, v T) error {
	size, idx, err := plainType[T]()
	if err != nil {
		return err
	}
	if !validTagID(id) {
		return ErrTagID
	}
	if s := m.findTag(id, typ); s != nil {
		s.n = 0
	}
	b, err := m.TagAllocate(id, typ, size)
	if err != nil {
		return err
	}
	storePlain(b, &v)
	m.findTag(id, typ).goT = idx
	return nil
}

// TagGet returns the packet's tag of that id and type as a T stored by
// TagPut. It reports false when there is no such tag or it was not stored
// by TagPut[T] with the same T.
func TagGet[T any](m *Mbuf, id TagIDType, typ uint16) (T, bool) {
	var v T
	size, idx, err := plainType[T]()
	if err != nil {
		return v, false
	}
	s := m.findTag(id, typ)
	if s == nil || s.goT != idx || int(s.n) != size {
		return v, false
	}
	loadPlain(&v, s.data[:size])
	return v, true
}

// plainTypes caches plainType's verdict per type: a nonzero index that
// names the type in a tag slot, or -1 for a type TagPut refuses. The map
// is never changed once published (copy on write under plainTypesMu), so
// readers need no lock.
var (
	plainTypes   atomic.Pointer[map[reflect.Type]int32]
	plainTypesMu sync.Mutex
)

// plainType returns T's size and index if T is plain data TagPut accepts.
func plainType[T any]() (size int, idx uint32, err error) {
	t := reflect.TypeFor[T]()
	var n int32
	if mp := plainTypes.Load(); mp != nil {
		n = (*mp)[t]
	}
	if n == 0 {
		n = registerPlainType(t)
	}
	if n < 0 {
		return 0, 0, ErrTagType
	}
	if size = int(t.Size()); size == 0 || size > TagSize {
		return 0, 0, ErrTagSize
	}
	return size, uint32(n), nil
}

func registerPlainType(t reflect.Type) int32 {
	plainTypesMu.Lock()
	defer plainTypesMu.Unlock()
	old := map[reflect.Type]int32{}
	if mp := plainTypes.Load(); mp != nil {
		old = *mp
	}
	if n, ok := old[t]; ok {
		return n
	}
	next := make(map[reflect.Type]int32, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	n := int32(-1)
	if isPlain(t) {
		n = int32(len(old) + 1)
	}
	next[t] = n
	plainTypes.Store(&next)
	return n
}

// isPlain reports whether every bit pattern of t's size is a valid t
// holding no pointers (nor anything the garbage collector or the runtime
// treats as one), so that its bytes can be copied in and out of a tag.
// Booleans are left out: only 0 and 1 are valid.
func isPlain(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return isPlain(t.Elem())
	case reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			if !isPlain(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}
