package tree

import (
	"fmt"
	"slices"
	"strings"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// OpKind says what an Op does to its path.
type OpKind uint8

// The changes a commit can make to a path.
const (
	// OpUpsert creates or replaces a file or symlink, or creates a directory
	// (keeping its children if it exists) and sets its metadata.
	OpUpsert OpKind = iota + 1
	// OpDelete removes the path and everything below it; a missing path is fine.
	OpDelete
	// OpReplace makes the path an empty directory with the given metadata,
	// dropping whatever was there (an overlay's opaque directory).
	OpReplace
	// OpGraft makes the path a copy of the directory at From, with the given
	// metadata, dropping whatever was there: a directory the pod renamed (an
	// overlay redirect), placed in O(1) as one subtree. From is read in the
	// head as the commit found it, before its first op, so that grafts do
	// not depend on each other's order; Entry.Digest is the tree object the
	// pod's base held at From. See Commit for what a graft gives when
	// another commit changed From since the base.
	OpGraft
)

func (k OpKind) String() string {
	switch k {
	case OpUpsert:
		return "upsert"
	case OpDelete:
		return "delete"
	case OpReplace:
		return "replace"
	case OpGraft:
		return "graft"
	}
	return fmt.Sprintf("op(%d)", uint8(k))
}

// Op is one change of a commit.
type Op struct {
	Kind OpKind `json:"k"`
	// Path is slash-separated and relative to the volume root.
	Path string `json:"p"`
	// Entry is the new entry for upserts, replaces and grafts; its Name is
	// ignored, and so are a directory's Size and Count, which the home
	// computes.
	Entry Entry `json:"e"`
	// From is, for a graft only, the slash-separated path of the directory
	// it copies.
	From string `json:"f,omitempty"`
}

// Commit is a pod's writes: changes computed against the snapshot the pod
// started from (Base), applied on top of the current head in order. The last
// writer wins per path.
//
// A directory the pod renamed is a graft of the directory at its old path
// (From) to its new one, a delete of the old path (the overlay's whiteout),
// and the pod's changes below the new path. The graft copies what the head
// holds at From when the commit is applied, which is the base's subtree
// unless another commit changed it since. So when a pod renames X to Y while
// another pod writes below X:
//   - if the other commit is applied first, its writes below X move to Y
//     with the rename, as on a local disk where they came first, and this
//     pod's own changes below Y apply on top of them, path by path; if it
//     removed X, Y holds only what this pod wrote below it;
//   - if it is applied after, Y is the base's X with this pod's changes, and
//     the other pod's writes recreate X holding those writes alone (its
//     directories are upserts, which create what is missing).
//
// Either way no write is applied outside the volume: a graft never reads a
// tree object the head does not reach, and the sizes and counts it adds are
// the head's own.
//
// A large commit carries its ops in Parts (see PartOps), applied after Ops.
type Commit struct {
	Base  cas.Digest `json:"base"`
	Ops   []Op       `json:"ops"`
	Parts []cas.Ref  `json:"parts,omitempty"`
}

// Validate checks every inline op's path and entry and the list of parts
// (a part's ops are checked as it is read); what it finds wrong is
// ErrInvalid.
func (c *Commit) Validate() error {
	if err := c.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

func (c *Commit) validate() error {
	if len(c.Parts) > MaxParts {
		return fmt.Errorf("%d parts, at most %d", len(c.Parts), MaxParts)
	}
	for i, p := range c.Parts {
		if p.Digest.IsZero() || p.Size <= 0 || p.Size > MaxPartBytes {
			return fmt.Errorf("part %d: %s of %d bytes, at most %d", i, p.Digest, p.Size, MaxPartBytes)
		}
	}
	for i, op := range c.Ops {
		if _, err := SplitPath(op.Path); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if op.Kind != OpGraft && op.From != "" {
			return fmt.Errorf("op %d: from %q on an op other than a graft", i, op.From)
		}
		switch op.Kind {
		case OpDelete:
		case OpUpsert, OpReplace, OpGraft:
			e := op.Entry
			e.Name = "x"
			if (op.Kind == OpReplace || op.Kind == OpGraft) && e.Type != TypeDir {
				return fmt.Errorf("op %d: %s of %q with a %s", i, op.Kind, op.Path, e.Type)
			}
			if op.Kind == OpGraft {
				if _, err := SplitPath(op.From); err != nil {
					return fmt.Errorf("op %d: graft from: %w", i, err)
				}
				if e.Digest.IsZero() {
					return fmt.Errorf("op %d: graft of %q without the base's tree", i, op.Path)
				}
			}
			if e.Type == TypeDir {
				e.Size, e.Count, e.Digest = 0, 0, cas.Digest{}
			}
			if err := (&Tree{Entries: []Entry{e}}).Validate(); err != nil {
				return fmt.Errorf("op %d on %q: %w", i, op.Path, err)
			}
		default:
			return fmt.Errorf("op %d: unknown kind %d", i, op.Kind)
		}
	}
	return nil
}

// mtree is a tree being edited: directories are loaded from the store when
// first walked into and written back, bottom-up, when the edit is done.
type mtree struct {
	store   *cas.Store
	load    func(cas.Digest) error // makes a tree object present in store
	trees   *[]cas.Digest          // tree objects written by this edit
	entries []Entry
	subs    map[string]*mtree // loaded subdirectories by name
	dirty   bool
	loaded  *int // entries the edit holds, loaded or added (see bound)
}

// Load reads, verifies and decodes tree object d from s.
func Load(s *cas.Store, d cas.Digest) (*Tree, error) {
	b, err := s.ReadAll(d)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", d, err)
	}
	return Decode(b)
}

func (m *mtree) open(d cas.Digest) (*mtree, error) {
	if err := m.load(d); err != nil {
		return nil, fmt.Errorf("tree %s: %w", d, err)
	}
	t, err := Load(m.store, d)
	if err != nil {
		return nil, err
	}
	*m.loaded += len(t.Entries)
	return &mtree{store: m.store, load: m.load, trees: m.trees, entries: t.Entries, loaded: m.loaded}, nil
}

// empty returns a new empty directory of the same edit.
func (m *mtree) empty() *mtree {
	return &mtree{store: m.store, load: m.load, trees: m.trees, dirty: true, loaded: m.loaded}
}

func (m *mtree) find(name string) int {
	return (&Tree{Entries: m.entries}).Find(name)
}

// sub returns the loaded subdirectory name, loading it if needed.
func (m *mtree) sub(name string) (*mtree, error) {
	if s, ok := m.subs[name]; ok {
		return s, nil
	}
	i := m.find(name)
	if i < 0 || m.entries[i].Type != TypeDir {
		return nil, fmt.Errorf("%q is not a directory", name)
	}
	s, err := m.open(m.entries[i].Digest)
	if err != nil {
		return nil, err
	}
	if m.subs == nil {
		m.subs = map[string]*mtree{}
	}
	m.subs[name] = s
	return s, nil
}

// put sets entry e (by e.Name), replacing whatever had that name.
func (m *mtree) put(e Entry, child *mtree) {
	m.dirty = true
	i, found := slices.BinarySearchFunc(m.entries, e.Name, func(x Entry, n string) int { return strings.Compare(x.Name, n) })
	if found {
		m.entries[i] = e
	} else {
		m.entries = slices.Insert(m.entries, i, e)
		if m.loaded != nil {
			*m.loaded++ // held like a loaded one, until a flush lets it go
		}
	}
	if m.subs == nil {
		m.subs = map[string]*mtree{}
	}
	if child != nil {
		m.subs[e.Name] = child
	} else {
		delete(m.subs, e.Name)
	}
}

func (m *mtree) remove(name string) {
	if i := m.find(name); i >= 0 {
		m.entries = slices.Delete(m.entries, i, i+1)
		delete(m.subs, name)
		m.dirty = true
	}
}

// parent walks to the directory holding the last component of parts,
// creating missing directories with meta's ownership.
func (m *mtree) parent(parts []string, meta Entry) (*mtree, error) {
	cur := m
	for _, name := range parts[:len(parts)-1] {
		i := cur.find(name)
		if i < 0 || cur.entries[i].Type != TypeDir {
			// A missing parent (or a file where a directory now is) becomes a directory.
			d := Entry{Name: name, Type: TypeDir, Mode: 0o755, UID: meta.UID, GID: meta.GID, Mtime: meta.Mtime}
			child := m.empty()
			cur.put(d, child)
			cur = child
			continue
		}
		next, err := cur.sub(name)
		if err != nil {
			return nil, err
		}
		cur.dirty = true
		cur = next
	}
	return cur, nil
}

// apply makes one change.
func (m *mtree) apply(op Op) error {
	parts, err := SplitPath(op.Path)
	if err != nil {
		return err
	}
	name := parts[len(parts)-1]
	if op.Kind == OpDelete {
		// Walk without creating: deleting below a missing directory is a no-op.
		cur := m
		for _, p := range parts[:len(parts)-1] {
			if i := cur.find(p); i < 0 || cur.entries[i].Type != TypeDir {
				return nil
			}
			if cur, err = cur.sub(p); err != nil {
				return err
			}
		}
		cur.remove(name)
		// Mark the path dirty so that totals are recomputed up to the root.
		return m.touch(parts[:len(parts)-1])
	}
	dir, err := m.parent(parts, op.Entry)
	if err != nil {
		return err
	}
	e := op.Entry
	e.Name = name
	switch {
	case e.Type != TypeDir:
		dir.put(e, nil)
	case op.Kind == OpReplace:
		dir.put(e, m.empty())
	default:
		if i := dir.find(name); i >= 0 && dir.entries[i].Type == TypeDir {
			child, err := dir.sub(name)
			if err != nil {
				return err
			}
			child.dirty = true
			dir.put(e, child)
		} else {
			dir.put(e, m.empty())
		}
	}
	return nil
}

// lookup returns the directory entry at parts below m, nil if there is none,
// without changing anything.
func (m *mtree) lookup(parts []string) (*Entry, error) {
	cur := m
	for i, name := range parts {
		j := cur.find(name)
		if j < 0 || cur.entries[j].Type != TypeDir {
			return nil, nil
		}
		if i == len(parts)-1 {
			e := cur.entries[j]
			return &e, nil
		}
		next, err := cur.sub(name)
		if err != nil {
			return nil, err
		}
		cur = next
	}
	return nil, nil
}

// graft places at op.Path the directory src (the head's at op.From before
// the commit), or an empty one if there was none, with op's metadata. The
// subtree is src's tree object, loaded only if a later op walks into it;
// its size and count are src's, which a home computed.
func (m *mtree) graft(op Op, src *Entry) error {
	parts, err := SplitPath(op.Path)
	if err != nil {
		return err
	}
	dir, err := m.parent(parts, op.Entry)
	if err != nil {
		return err
	}
	e := op.Entry
	e.Name = parts[len(parts)-1]
	if src == nil {
		e.Digest, e.Size, e.Count = cas.Digest{}, 0, 0
		dir.put(e, m.empty())
		return nil
	}
	e.Digest, e.Size, e.Count = src.Digest, src.Size, src.Count
	dir.put(e, nil) // no loaded child: the subtree stays as it is
	return nil
}

// touch marks every directory along parts dirty.
func (m *mtree) touch(parts []string) error {
	cur := m
	cur.dirty = true
	for _, p := range parts {
		next, err := cur.sub(p)
		if err != nil {
			return nil // already gone: nothing below to recompute
		}
		next.dirty = true
		cur = next
	}
	return nil
}

// write stores every dirty directory, bottom-up, and returns the root's
// digest and totals.
func (m *mtree) write() (cas.Digest, int64, int64, error) {
	for i := range m.entries {
		e := &m.entries[i]
		child, ok := m.subs[e.Name]
		if !ok || !child.dirty || e.Type != TypeDir {
			continue
		}
		d, size, count, err := child.write()
		if err != nil {
			return cas.Digest{}, 0, 0, err
		}
		e.Digest, e.Size, e.Count = d, size, count
	}
	t := &Tree{Entries: m.entries}
	size, count := t.Totals()
	d, err := m.store.PutBytes(t.Encode())
	*m.trees = append(*m.trees, d)
	m.dirty = false
	return d, size, count, err
}

// files calls fn for every file below m with its path, loading the whole tree.
func (m *mtree) files(prefix string, fn func(path string, e Entry)) error {
	for _, e := range slices.Clone(m.entries) {
		p := e.Name
		if prefix != "" {
			p = prefix + "/" + e.Name
		}
		switch e.Type {
		case TypeDir:
			s, err := m.sub(e.Name)
			if err != nil {
				return err
			}
			if err := s.files(p, fn); err != nil {
				return err
			}
		default:
			fn(p, e)
		}
	}
	return nil
}

// Empty returns the encoding of a directory with nothing in it.
func Empty() []byte { return (&Tree{}).Encode() }
