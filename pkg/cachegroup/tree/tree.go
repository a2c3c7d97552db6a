package tree

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// Type is the kind of a tree entry.
type Type uint8

// The kinds of entry a tree holds. Devices, FIFOs and sockets are never stored.
const (
	TypeFile    Type = 1
	TypeDir     Type = 2
	TypeSymlink Type = 3
)

func (t Type) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Entry is one name in a directory object.
type Entry struct {
	Name  string
	Type  Type
	Mode  uint32 // permission bits and sticky; never setuid or setgid
	UID   uint32
	GID   uint32
	Mtime int64 // nanoseconds since the Unix epoch
	// Size is a file's length, a symlink's target length, or for a directory
	// the total bytes of the files below it.
	Size int64
	// Count is, for a directory, the number of entries below it; 0 otherwise.
	Count int64
	// Digest is a file's content or a directory's tree object.
	Digest cas.Digest
	// Target is a symlink's target, recorded as it is and never followed.
	Target string
}

// Meta returns what a snapshot's file or directory of e carries besides its
// content.
func (e Entry) Meta() cas.Meta { return cas.Meta{Mode: e.Mode, UID: e.UID, GID: e.GID, Mtime: e.Mtime} }

// Tree is a directory object: its entries, sorted by name, names unique.
type Tree struct {
	Entries []Entry
}

// Find returns the index of the entry called name, or -1.
func (t *Tree) Find(name string) int {
	i, ok := slices.BinarySearchFunc(t.Entries, name, func(e Entry, n string) int { return strings.Compare(e.Name, n) })
	if !ok {
		return -1
	}
	return i
}

// Totals returns the bytes of files and the number of entries below t.
func (t *Tree) Totals() (size, count int64) {
	for _, e := range t.Entries {
		count++
		switch e.Type {
		case TypeFile:
			size += e.Size
		case TypeDir:
			size += e.Size
			count += e.Count
		}
	}
	return size, count
}

const treeMagic = "cgt1"

// maxTreeEntries bounds one directory object, so a hostile tree cannot make a
// decoder allocate without limit.
const maxTreeEntries = 1 << 20

// ValidName reports why name cannot be one path component of a tree, or nil.
func ValidName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case name == "." || name == "..":
		return fmt.Errorf("name %q is not allowed", name)
	case strings.ContainsRune(name, '/'):
		return fmt.Errorf("name %q contains '/'", name)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("name %q contains NUL", name)
	case len(name) > 255:
		return fmt.Errorf("name %.20q... longer than 255 bytes", name)
	}
	return nil
}

// Validate checks every rule a tree must keep: valid unique sorted names,
// known types, no setuid/setgid, sizes and targets consistent.
func (t *Tree) Validate() error {
	for i, e := range t.Entries {
		if err := ValidName(e.Name); err != nil {
			return fmt.Errorf("tree entry %d: %w", i, err)
		}
		if i > 0 && t.Entries[i-1].Name >= e.Name {
			return fmt.Errorf("tree entry %q: names not sorted and unique", e.Name)
		}
		if e.Mode&^cas.ModeMask != 0 {
			return fmt.Errorf("tree entry %q: mode %o has bits beyond permissions and sticky", e.Name, e.Mode)
		}
		if e.Size < 0 || e.Count < 0 {
			return fmt.Errorf("tree entry %q: negative size", e.Name)
		}
		switch e.Type {
		case TypeFile:
			if e.Target != "" || e.Count != 0 {
				return fmt.Errorf("tree entry %q: file with target or count", e.Name)
			}
		case TypeDir:
			if e.Target != "" {
				return fmt.Errorf("tree entry %q: directory with target", e.Name)
			}
		case TypeSymlink:
			if e.Target == "" || strings.IndexByte(e.Target, 0) >= 0 || len(e.Target) > 4096 {
				return fmt.Errorf("tree entry %q: bad symlink target", e.Name)
			}
			if !e.Digest.IsZero() || e.Count != 0 {
				return fmt.Errorf("tree entry %q: symlink with digest or count", e.Name)
			}
		default:
			return fmt.Errorf("tree entry %q: unknown type %d", e.Name, e.Type)
		}
	}
	return nil
}

// Encode returns the canonical bytes of t; equal trees encode equally, so a
// tree's digest names it.
func (t *Tree) Encode() []byte {
	var b bytes.Buffer
	b.Grow(16 + len(t.Entries)*96)
	b.WriteString(treeMagic)
	var tmp [binary.MaxVarintLen64]byte
	uv := func(v uint64) { b.Write(tmp[:binary.PutUvarint(tmp[:], v)]) }
	sv := func(v int64) { b.Write(tmp[:binary.PutVarint(tmp[:], v)]) }
	str := func(s string) { uv(uint64(len(s))); b.WriteString(s) }
	uv(uint64(len(t.Entries)))
	for _, e := range t.Entries {
		b.WriteByte(byte(e.Type))
		str(e.Name)
		uv(uint64(e.Mode))
		uv(uint64(e.UID))
		uv(uint64(e.GID))
		sv(e.Mtime)
		sv(e.Size)
		switch e.Type {
		case TypeFile:
			b.Write(e.Digest[:])
		case TypeDir:
			sv(e.Count)
			b.Write(e.Digest[:])
		case TypeSymlink:
			str(e.Target)
		}
	}
	return b.Bytes()
}

// Decode parses and validates a directory object. A tree that breaks any
// rule is rejected whole.
func Decode(data []byte) (*Tree, error) {
	d := decoder{b: data}
	if !bytes.HasPrefix(data, []byte(treeMagic)) {
		return nil, errors.New("decode tree: bad magic")
	}
	d.b = d.b[len(treeMagic):]
	n := d.uvarint()
	if n > maxTreeEntries || n > uint64(len(d.b)) {
		return nil, fmt.Errorf("decode tree: %d entries is too many", n)
	}
	t := &Tree{Entries: make([]Entry, 0, n)}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var e Entry
		e.Type = Type(d.byte())
		e.Name = d.string(255)
		e.Mode = d.uint32()
		e.UID = d.uint32()
		e.GID = d.uint32()
		e.Mtime = d.varint()
		e.Size = d.varint()
		switch e.Type {
		case TypeFile:
			e.Digest = d.digest()
		case TypeDir:
			e.Count = d.varint()
			e.Digest = d.digest()
		case TypeSymlink:
			e.Target = d.string(4096)
		default:
			if d.err == nil {
				d.err = fmt.Errorf("unknown entry type %d", e.Type)
			}
		}
		t.Entries = append(t.Entries, e)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errors.New("trailing bytes")
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode tree: %w", d.err)
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("decode tree: %w", err)
	}
	// One encoding per tree: an overlong number would give one tree two names.
	if !bytes.Equal(t.Encode(), data) {
		return nil, errors.New("decode tree: not in canonical encoding")
	}
	return t, nil
}

// decoder reads the tree encoding, remembering the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("truncated or malformed %s", what)
	}
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) < 1 {
		d.fail("type")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) uvarint() uint64 { return number(d, binary.Uvarint) }

func (d *decoder) varint() int64 { return number(d, binary.Varint) }

// number reads one number with read (binary.Uvarint or binary.Varint).
func number[T uint64 | int64](d *decoder, read func([]byte) (T, int)) T {
	if d.err != nil {
		return 0
	}
	v, n := read(d.b)
	if n <= 0 {
		d.fail("number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail("32-bit number")
	}
	return uint32(v)
}

func (d *decoder) string(max int) string {
	n := d.uvarint()
	if d.err != nil || n > uint64(max) || n > uint64(len(d.b)) {
		d.fail("string")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) digest() cas.Digest {
	var g cas.Digest
	if d.err != nil || len(d.b) < len(g) {
		d.fail("digest")
		return g
	}
	copy(g[:], d.b)
	d.b = d.b[len(g):]
	return g
}

// SplitPath splits a slash-separated relative path into validated components.
func SplitPath(p string) ([]string, error) {
	if p == "" {
		return nil, errors.New("empty path")
	}
	parts := strings.Split(p, "/")
	for _, c := range parts {
		if err := ValidName(c); err != nil {
			return nil, fmt.Errorf("path %q: %w", p, err)
		}
	}
	return parts, nil
}
