package mounter

import (
	"fmt"
	"os"
	"sync"
)

// Mounter makes the mounts that present cache volumes to pods. System makes
// them for real; Fake records them, for tests of the logic around mounts.
type Mounter interface {
	// Overlay mounts lower read-only under the private upper/work layer at
	// target (see Overlay).
	Overlay(target, lower, upper, work string) error
	// Stack mounts lowers (newest first) at target: under the private
	// upper/work layer (see OverlayStack) or, with upper "", read-only (a
	// bind of a single layer, else see ReadOnlyStack).
	Stack(target string, lowers []string, upper, work string) error
	// BindReadOnly bind-mounts source at target read-only (see BindReadOnly).
	BindReadOnly(target, source string) error
	// Unmount unmounts target and what is stacked on it; a target that is
	// not mounted is not an error (see Unmount).
	Unmount(target string) error
	// IsMountPoint reports whether path is a mount point (see IsMountPoint).
	IsMountPoint(path string) (bool, error)
}

// System is the Mounter of this machine's kernel: the functions of this
// package.
type System struct{}

var _ Mounter = System{}

func (System) Overlay(target, lower, upper, work string) error {
	return Overlay(target, lower, upper, work)
}
func (System) Stack(target string, lowers []string, upper, work string) error {
	switch {
	case upper != "":
		return OverlayStack(target, lowers, upper, work)
	case len(lowers) == 1:
		return BindReadOnly(target, lowers[0])
	}
	return ReadOnlyStack(target, lowers)
}
func (System) BindReadOnly(target, source string) error { return BindReadOnly(target, source) }
func (System) Unmount(target string) error              { return Unmount(target) }
func (System) IsMountPoint(path string) (bool, error)   { return IsMountPoint(path) }

// Fake records mounts instead of making them. Its paths must exist, as a
// real mount's would; a fake mount shows nothing at its target. The zero
// Fake is ready.
type Fake struct {
	mu     sync.Mutex
	mounts map[string]FakeMount
	stuck  map[string]error // targets whose Unmount leaves the mount
}

// FakeMount is a mount a Fake recorded.
type FakeMount struct {
	Lower    string   // the snapshot mounted (the bind's source); a stack's newest layer
	Lowers   []string // a stack's layers, newest first
	Upper    string   // the overlay's upper directory; empty for a bind
	ReadOnly bool
}

var _ Mounter = (*Fake)(nil)

// Overlay records an overlay mount at target.
func (f *Fake) Overlay(target, lower, upper, work string) error {
	return f.mount(target, FakeMount{Lower: lower, Upper: upper}, lower, upper, work)
}

// Stack records a mount of lowers at target, read-only if upper is "".
func (f *Fake) Stack(target string, lowers []string, upper, work string) error {
	if len(lowers) == 0 {
		return fmt.Errorf("fake mount at %s: no lower layer", target)
	}
	m := FakeMount{Lower: lowers[0], Lowers: lowers, Upper: upper, ReadOnly: upper == ""}
	paths := lowers
	if upper != "" {
		paths = append([]string{upper, work}, lowers...)
	}
	return f.mount(target, m, paths...)
}

// BindReadOnly records a read-only bind of source at target.
func (f *Fake) BindReadOnly(target, source string) error {
	return f.mount(target, FakeMount{Lower: source, ReadOnly: true}, source)
}

func (f *Fake) mount(target string, m FakeMount, paths ...string) error {
	for _, p := range append([]string{target}, paths...) {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("fake mount at %s: %w", target, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mounts == nil {
		f.mounts = map[string]FakeMount{}
	}
	if _, ok := f.mounts[target]; ok {
		return fmt.Errorf("fake mount at %s: already mounted (a real mount would stack)", target)
	}
	f.mounts[target] = m
	return nil
}

// Unmount forgets the mount at target, unless KeepMounted holds it.
func (f *Fake) Unmount(target string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err, ok := f.stuck[target]; ok {
		return err
	}
	delete(f.mounts, target)
	return nil
}

// KeepMounted makes every later Unmount of target leave its mount in place
// and return err: an error such as EBUSY is a busy mount, nil a mount that
// another mount stacked on target hides from one unmount.
func (f *Fake) KeepMounted(target string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stuck == nil {
		f.stuck = map[string]error{}
	}
	f.stuck[target] = err
}

// Release undoes KeepMounted: Unmount of target works again.
func (f *Fake) Release(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.stuck, target)
}

// IsMountPoint reports whether a mount is recorded at path.
func (f *Fake) IsMountPoint(path string) (bool, error) {
	_, ok := f.Mount(path)
	return ok, nil
}

// Mount returns the mount recorded at target.
func (f *Fake) Mount(target string) (FakeMount, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.mounts[target]
	return m, ok
}

// Mounts returns how many mounts are recorded.
func (f *Fake) Mounts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.mounts)
}
