package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

func TestTarPathsStayBelowTheRoot(t *testing.T) {
	for in, want := range map[string]string{"./a/b": "a/b", "/abs/x": "abs/x", "a//b/": "a/b", ".": "", "./": ""} {
		if got, err := tarPath(in); err != nil || got != want {
			t.Errorf("tarPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"../x", "a/../../b", "a/.."} {
		if got, err := tarPath(in); err == nil {
			t.Errorf("tarPath(%q) = %q, want refused", in, got)
		}
	}
}

func TestFlagsGoAnywhere(t *testing.T) {
	var o options
	pos, err := parse(flags(&o), []string{"-o", "json", "import", "dir", "--address=h:1", "vol", "--all"})
	if err != nil || strings.Join(pos, " ") != "import dir vol" || o.output != "json" || o.address != "h:1" || !o.all {
		t.Fatalf("parse: %v %v %+v", pos, err, o)
	}
}

// pair is two members on loopback, each serving the peer protocol, and the
// group's secret file.
func pair(t *testing.T) (a *cachegroup.Member, addrA, secretFile string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for the ownership of materialised files")
	}
	secret := []byte("0123456789abcdef-cachegroupctl-test")
	secretFile = filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	var lns []net.Listener
	var members []string
	for _, n := range []string{"node-a", "node-b"} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		members = append(members, n+"="+ln.Addr().String())
	}
	var ms []*cachegroup.Member
	for i, n := range []string{"node-a", "node-b"} {
		m, err := cachegroup.Open(cachegroup.Config{NodeID: n, Dir: filepath.Join(t.TempDir(), n), Members: members,
			Auth: wire.NewSecretAuth(secret), Replicas: 2})
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: m.PeerHandler()}
		go srv.Serve(lns[i])
		ctx, cancel := context.WithCancel(context.Background())
		go m.Run(ctx)
		t.Cleanup(func() { cancel(); srv.Close(); m.Close() })
		ms = append(ms, m)
	}
	for deadline := time.Now().Add(20 * time.Second); !ms[0].Group().Live("node-b") || !ms[1].Group().Live("node-a"); {
		if time.Now().After(deadline) {
			t.Fatal("the two members never saw each other live")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return ms[0], lns[0].Addr().String(), secretFile
}

// The tool seeds a volume from a directory, lists it, exports it back
// byte for byte, and verifies a store, against two real members.
func TestImportExportRoundTrip(t *testing.T) {
	a, addr, secret := pair(t)
	ctx := context.Background()
	v, err := a.Group().CreateVolume(ctx, volume.Spec{Name: "pvc-ctl", Quota: 1 << 30}, "")
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	files := map[string]string{"a.txt": "alpha", "dir/b.bin": strings.Repeat("b", 100000), "dir/sub/c": "", "dup": "alpha"}
	for p, c := range files {
		os.MkdirAll(filepath.Join(src, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(src, p), []byte(c), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a.txt", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	ctl := func(args ...string) string {
		t.Helper()
		var out bytes.Buffer
		if err := run(append(args, "--address="+addr, "--secret-file="+secret), &out); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}
	var res importResult
	if err := json.Unmarshal([]byte(ctl("import", src, "pvc-ctl", "-o", "json")), &res); err != nil {
		t.Fatal(err)
	}
	if res.Files != 4 || res.Blobs != 3 || res.Generation != v.Generation+1 || res.Volume != v.ID {
		t.Fatalf("import: %+v, want 4 files of 3 blobs as the next generation of %s", res, v.ID)
	}
	if out := ctl("volumes"); !strings.Contains(out, v.ID) || !strings.Contains(out, "pvc-ctl") {
		t.Fatalf("volumes:\n%s", out)
	}
	dst := filepath.Join(t.TempDir(), "out")
	ctl("export", v.ID, dst)
	for p, c := range files {
		got, err := os.ReadFile(filepath.Join(dst, p))
		if err != nil || string(got) != c {
			t.Errorf("exported %s: %.20q, %v; want %.20q", p, got, err, c)
		}
		if fi, err := os.Stat(filepath.Join(dst, p)); err == nil && fi.Mode().Perm() != 0o640 {
			t.Errorf("exported %s with mode %v, want 0640", p, fi.Mode().Perm())
		}
	}
	if target, err := os.Readlink(filepath.Join(dst, "link")); err != nil || target != "a.txt" {
		t.Errorf("exported symlink: %q %v", target, err)
	}
	var sts []wire.Status
	if err := json.Unmarshal([]byte(ctl("status", "-o", "json")), &sts); err != nil {
		t.Fatal(err)
	}
	var owned int64
	for _, st := range sts {
		owned += st.OwnedBlobs
	}
	// Three file blobs, the tree objects of the root, dir and dir/sub, and
	// the empty tree the volume was created with, each at both members
	// (R=2 of 2).
	if len(sts) != 2 || owned != 2*(3+4) {
		t.Fatalf("status: %d members owning %d blobs, want 2 owning 14: %+v", len(sts), owned, sts)
	}
	out := ctl("verify", "node-b")
	if !strings.Contains(out, "node-b") || strings.Contains(out, "corrupt copy") {
		t.Fatalf("verify:\n%s", out)
	}
}

// gc finds a deleted volume's blobs as garbage, and deletes them at once
// unless asked only to look.
func TestCollectNow(t *testing.T) {
	a, addr, secret := pair(t)
	ctx := context.Background()
	v, err := a.Group().CreateVolume(ctx, volume.Spec{Name: "pvc-gc", Quota: 1 << 30}, "")
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("soon garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	collect := func(args ...string) []wire.Collection {
		t.Helper()
		var out bytes.Buffer
		if err := run(append(args, "--address="+addr, "--secret-file="+secret, "-o", "json"), &out); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		var cs []wire.Collection
		if err := json.Unmarshal(out.Bytes(), &cs); err != nil && len(args) > 0 && args[0] == "gc" {
			t.Fatal(err)
		}
		return cs
	}
	collect("import", src, "pvc-gc")
	garbage := func(cs []wire.Collection) (g, deleted int) {
		for _, c := range cs {
			g += c.Garbage
			deleted += c.Deleted
		}
		return g, deleted
	}
	if cs := collect("gc", "--all", "--dry-run"); len(cs) != 2 {
		t.Fatalf("gc --all answered for %d members, want 2", len(cs))
	} else if g, _ := garbage(cs); g != 0 {
		t.Fatalf("%d blobs garbage while the volume lives", g)
	}
	if err := a.Group().DeleteVolume(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if g, d := garbage(collect("gc", "--all", "--dry-run")); g == 0 || d != 0 {
		t.Fatalf("dry run after the delete: %d garbage, %d deleted", g, d)
	}
	if g, d := garbage(collect("gc", "--all")); g == 0 || d != g {
		t.Fatalf("gc after the delete: %d garbage, %d deleted", g, d)
	}
	if g, _ := garbage(collect("gc", "--all", "--dry-run")); g != 0 {
		t.Fatalf("%d blobs still garbage after gc", g)
	}
}
