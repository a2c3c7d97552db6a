package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"golang.org/x/sys/unix"
)

// buildLayer builds root's thin layer over parent's stack ps in a work
// directory, moves it into place and records it last. A
// crash at any point leaves a layer without its record, which is never used
// and is rebuilt.
func (n *Node) buildLayer(root, parent cas.Digest, ps stackInfo, want Want) error {
	if err := os.MkdirAll(n.layersDir(), 0o711); err != nil {
		return fmt.Errorf("layer %s: %w", root, err)
	}
	work := filepath.Join(n.layersDir(), ".work-"+root.String())
	// A diff is cheap to redo: start over rather than resume.
	n.discard(work)
	// Half-built, or over a chain that broke (no live mount uses one: Prune
	// keeps the chains of live mounts): the record goes first.
	if err := os.Remove(n.layerMetaPath(root)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("layer %s: %w", root, err)
	}
	n.discard(n.layerPath(root))
	if want.Sharing {
		n.sharing.Add(1)
		defer n.sharing.Add(-1)
	}
	ctx := n.hydrating(want)
	h := n.newHydration(ctx, work, root, want)
	if err := os.Mkdir(work, 0o755); err != nil {
		return fmt.Errorf("layer %s: %w", root, err)
	}
	changed, count, err := h.diff(ctx, parent, root)
	if err != nil {
		return fmt.Errorf("layer %s over %s: %w", root, parent, err)
	}
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	// Nothing is synced: the record names this boot, and a layer recorded
	// in an earlier one, whose entries may not all have reached the disk,
	// is never used (a thin layer is cheap to build again). A record lost
	// in a crash only makes the layer be rebuilt; a torn one does not decode.
	if err := os.Rename(work, n.layerPath(root)); err != nil {
		return fmt.Errorf("layer %s: %w", root, err)
	}
	m := layerMeta{Root: root, Parent: parent, Depth: ps.depth + 1, Changed: changed, Count: count, Boot: bootID()}
	b, _ := json.Marshal(m)
	if err := writeRenamed(n.layerMetaPath(root), b); err != nil {
		return fmt.Errorf("layer %s: %w", root, err)
	}
	return nil
}

// bootID names this boot of the machine: what a process restart keeps and
// a reboot (or crash of the machine) changes.
var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
})

// diff fills the work directory with what differs from tree old to tree
// new, walking only through directories whose digests differ: new and
// changed entries (a new directory whole, and opaque), whiteouts for the
// deleted ones, and the directories on the way, which merge with the layers
// below. It returns the entries the layer holds and the entries of new.
func (h *hydration) diff(ctx context.Context, old, new cas.Digest) (changed, count int64, err error) {
	if err := h.run(ctx, dirWork{path: h.work, old: old, new: new, top: true}); err != nil {
		return 0, 0, err
	}
	t, err := tree.Load(h.n.store, new)
	if err != nil {
		return 0, 0, err
	}
	_, count = t.Totals()
	return h.changed.Load(), count, nil
}

// diffDir puts in w's directory of the layer what differs between its two
// trees. It returns the directories to fill next (to compare, or new ones
// to fill whole) and the files to put.
func (h *hydration) diffDir(w dirWork) (sub []dirWork, files []placed, err error) {
	ot, err := h.tree(w.old)
	if err != nil {
		return nil, nil, err
	}
	nt, err := h.tree(w.new)
	if err != nil {
		return nil, nil, err
	}
	d := &dirDone{w: w}
	var changed int64
	defer func() { h.changed.Add(changed) }()
	// add puts entry e, absent from the layers below or replacing another
	// type there, whole.
	add := func(e tree.Entry) error {
		path := filepath.Join(w.path, e.Name)
		changed++
		switch e.Type {
		case tree.TypeDir:
			if err := unix.Mkdir(path, cas.DirMode(e.Meta())); err != nil {
				return fmt.Errorf("mkdir %s: %w", path, err)
			}
			// Opaque: nothing below shows through, and lookups stop here.
			if err := unix.Setxattr(path, "trusted.overlay.opaque", []byte("y"), 0); err != nil {
				return fmt.Errorf("mark %s opaque: %w", path, err)
			}
			changed += e.Count
			sub = append(sub, dirWork{path: path, new: e.Digest, meta: e.Meta()})
		case tree.TypeFile:
			files = append(files, placed{path, e, d})
		case tree.TypeSymlink:
			return makeSymlink(e, path)
		}
		return nil
	}
	oe, ne := ot.Entries, nt.Entries
	for i, j := 0, 0; (i < len(oe) || j < len(ne)) && err == nil; {
		switch {
		case j == len(ne) || i < len(oe) && oe[i].Name < ne[j].Name:
			changed++
			path := filepath.Join(w.path, oe[i].Name)
			if err = unix.Mknod(path, unix.S_IFCHR, 0); err != nil {
				err = fmt.Errorf("whiteout %s: %w", path, err)
			}
			i++
		case i == len(oe) || ne[j].Name < oe[i].Name:
			err = add(ne[j])
			j++
		default:
			o, e := oe[i], ne[j]
			i++
			j++
			switch {
			case o == e:
			case o.Type == tree.TypeDir && e.Type == tree.TypeDir:
				// Merges with the directory below: only its changes here.
				path := filepath.Join(w.path, e.Name)
				if err = unix.Mkdir(path, cas.DirMode(e.Meta())); err != nil && !errors.Is(err, unix.EEXIST) {
					err = fmt.Errorf("mkdir %s: %w", path, err)
					break
				}
				err = nil
				changed++
				if o.Digest != e.Digest {
					sub = append(sub, dirWork{path: path, old: o.Digest, new: e.Digest, meta: e.Meta()})
				} else {
					err = h.n.store.SetDirMeta(path, e.Meta()) // it stays empty here
				}
			default:
				err = add(e)
			}
		}
	}
	if err != nil {
		return nil, nil, err
	}
	d.left.Store(int32(len(files)) + 1)
	return sub, files, h.entryIn(d)
}
