package node

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"golang.org/x/sys/unix"
)

// fileCapability is a security.capability value (VFS_CAP_REVISION_2,
// effective) granting CAP_NET_BIND_SERVICE.
func fileCapability() []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000001)
	binary.LittleEndian.PutUint32(b[4:], 1<<unix.CAP_NET_BIND_SERVICE)
	return b
}

// xattrsOf lists the extended attributes of path itself (not of what a
// symlink names).
func xattrsOf(t *testing.T, path string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		t.Fatalf("list extended attributes of %s: %v", path, err)
	}
	return string(buf[:n])
}

// A pod's extended attributes never reach the group: the blob its file
// becomes carries none, nor does the snapshot materialised from the commit.
func TestCommitKeepsNoExtendedAttributes(t *testing.T) {
	n, l := newNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20})
	content := []byte("#!/bin/sh\necho privileged\n")
	layerWith(t, n, v, "/pods/a", func(up string) {
		f, d := filepath.Join(up, "tool"), filepath.Join(up, "d")
		must(t, os.WriteFile(f, content, 0o755))
		must(t, unix.Setxattr(f, "user.x", []byte("pod"), 0))
		must(t, unix.Setxattr(f, "trusted.x", []byte("pod"), 0))
		must(t, unix.Setxattr(f, "trusted.overlay.origin", []byte("stale"), 0))
		must(t, unix.Setxattr(f, "security.capability", fileCapability(), 0))
		must(t, unix.Mkdir(d, 0o755))
		must(t, unix.Setxattr(d, "user.d", []byte("pod"), 0))
		if got := xattrsOf(t, f); got == "" {
			t.Fatal("the upper file holds no attributes: the test proves nothing")
		}
	})
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go n.Run(rctx)
	must(t, n.WaitIdle(ctx))
	head, err := l.Volume(ctx, v.ID)
	if err != nil || head.Count != 2 {
		t.Fatalf("head %+v, %v: want the commit applied", head, err)
	}
	if got := xattrsOf(t, n.store.Path(cas.Sum(content))); got != "" {
		t.Fatalf("blob carries extended attributes %q", got)
	}
	snap, err := n.Materialize(ctx, head.Root, Want{VolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"tool", "d"} {
		if got := xattrsOf(t, filepath.Join(snap, p)); got != "" {
			t.Fatalf("snapshot's %s carries extended attributes %q", p, got)
		}
	}
}
