package node

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"golang.org/x/sys/unix"
)

// redirectXattr is where an overlay mounted redirect_dir=on records, on an
// upper directory that a rename moved, which lower directory it continues:
// "/a/b", a path from the lower root, or "b", a name in the lower directory
// of its parent.
const redirectXattr = "trusted.overlay.redirect"

// maxRedirect bounds the redirects read: the kernel writes at most its
// redirect_max (256 bytes by default), and a path at most PATH_MAX.
const maxRedirect = 4096

// lowerDir is where an upper directory's lower layer is in the base: the
// directory the pod saw merged with it.
type lowerDir struct {
	path string // slash-separated from the root, "" for the root
	ok   bool   // false: the directory hides the lower layer or has none
}

// child returns the lower directory of a child called name that has no
// redirect: the lookup by its own name.
func (l lowerDir) child(name string) lowerDir {
	if !l.ok {
		return l
	}
	if l.path == "" {
		return lowerDir{path: name, ok: true}
	}
	return lowerDir{path: l.path + "/" + name, ok: true}
}

// dirPlace is how an upper directory enters a commit.
type dirPlace struct {
	kind   tree.OpKind // upsert, replace or graft
	from   string      // of a graft
	digest cas.Digest  // of a graft: the base's tree at from
	lower  lowerDir    // the directory's own lower, for its children
}

// placeDir says how the upper directory at p, called name, enters the
// commit, given the lower of its parent. It follows the overlay's lookup:
// an opaque directory hides the lower layer, redirect or not (a replace); a
// redirect names the lower directory to merge instead of name (an absolute
// one from the lower root, even below an opaque directory), and if that is
// not the one name itself would find, the directory was moved: a graft of
// the base's directory there. A redirect to nothing in the base leaves the
// pod seeing only the upper directory (a replace). Redirects are resolved in
// the base's tree only, by validated names: none can lead outside the
// volume. The parent need not be marked impure, as the kernel does not ask
// either; a redirect on a file or on the root is never read, as the kernel
// (with metacopy=off) never follows one there.
func placeDir(p, name string, parent lowerDir, base *baseTree, buf []byte) (dirPlace, error) {
	if opaque(p) {
		return dirPlace{kind: tree.OpReplace}, nil
	}
	own := parent.child(name)
	r, err := readRedirect(p, buf)
	if err != nil || r == "" {
		return dirPlace{kind: tree.OpUpsert, lower: own}, err
	}
	src := parent.child(r)
	if strings.HasPrefix(r, "/") {
		src = lowerDir{path: r[1:], ok: true}
	}
	if src == own { // renamed back, or moved within a renamed directory
		return dirPlace{kind: tree.OpUpsert, lower: own}, nil
	}
	e, ok, err := base.dir(src.path)
	if err != nil {
		return dirPlace{}, err
	}
	if !ok {
		return dirPlace{kind: tree.OpReplace}, nil
	}
	return dirPlace{kind: tree.OpGraft, from: src.path, digest: e.Digest, lower: src}, nil
}

// readRedirect returns the redirect of the upper directory at p, "" if it
// has none, reading it into buf (maxRedirect+1 bytes). A redirect the kernel
// would refuse to follow (empty, a component that is empty, "." or "..", a
// relative one with a '/') means the layer was written by something other
// than the overlay, since a pod cannot set trusted.overlay.* through it: the
// layer is refused (errBadLayer, quarantined with its reason) rather than
// committed as a guess of what the pod saw.
func readRedirect(p string, buf []byte) (string, error) {
	n, err := unix.Lgetxattr(p, redirectXattr, buf)
	switch {
	case errors.Is(err, unix.ENODATA), errors.Is(err, unix.EOPNOTSUPP):
		return "", nil
	case errors.Is(err, unix.ERANGE) || err == nil && n > maxRedirect:
		return "", fmt.Errorf("%w: %s: redirect longer than %d bytes", errBadLayer, p, maxRedirect)
	case err != nil:
		return "", fmt.Errorf("read redirect of %s: %w", p, err)
	}
	r := string(buf[:n])
	if err := checkRedirect(r); err != nil {
		return "", fmt.Errorf("%w: %s: %v", errBadLayer, p, err)
	}
	return r, nil
}

// checkRedirect says why r is not a redirect the overlay writes, or nil.
func checkRedirect(r string) error {
	var err error
	if rest, ok := strings.CutPrefix(r, "/"); ok {
		_, err = tree.SplitPath(rest)
	} else {
		err = tree.ValidName(r)
	}
	if err != nil {
		return fmt.Errorf("malformed redirect %.300q: %w", r, err)
	}
	return nil
}

// maxBaseTrees bounds the directory objects a baseTree keeps decoded.
const maxBaseTrees = 64

// baseTree reads the tree a layer's pod started from, to find the
// directories its renames moved.
type baseTree struct {
	store *cas.Store
	fetch func(cas.Digest) error // makes a tree object present in store
	root  cas.Digest
	trees map[cas.Digest]*tree.Tree
}

// dir returns the entry of the directory at slash-separated p (not the
// root) in the base, and whether there is a directory there. A nil base is
// empty.
func (b *baseTree) dir(p string) (tree.Entry, bool, error) {
	var e tree.Entry
	if b == nil {
		return e, false, nil
	}
	d := b.root
	for _, name := range strings.Split(p, "/") {
		t, err := b.load(d)
		if err != nil {
			return e, false, fmt.Errorf("base tree at %s: %w", path.Dir("/"+p), err)
		}
		i := t.Find(name)
		if i < 0 || t.Entries[i].Type != tree.TypeDir {
			return e, false, nil
		}
		e = t.Entries[i]
		d = e.Digest
	}
	return e, true, nil
}

func (b *baseTree) load(d cas.Digest) (*tree.Tree, error) {
	if t, ok := b.trees[d]; ok {
		return t, nil
	}
	if !b.store.Has(d) && b.fetch != nil {
		if err := b.fetch(d); err != nil {
			return nil, err
		}
	}
	t, err := tree.Load(b.store, d)
	if err != nil {
		return nil, err
	}
	if b.trees == nil || len(b.trees) >= maxBaseTrees {
		b.trees = map[cas.Digest]*tree.Tree{}
	}
	b.trees[d] = t
	return t, nil
}
