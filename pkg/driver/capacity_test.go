package driver

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
	"github.com/cachegroup/cachegroup/pkg/mounter"
)

// TestCapacityIsTheGroupsInEveryMode: GetCapacity answers what the group's
// members may take together, divided by R, whether asked of a member, a
// client-only node or the controller (which holds nothing itself); a member
// that stops answering counts for nothing.
func TestCapacityIsTheGroupsInEveryMode(t *testing.T) {
	auth := wire.NewSecretAuth([]byte("0123456789abcdef-test-secret"))
	open := func(t *testing.T, mode Mode, name string, cacheSize int64, clientOnly bool, members ...string) *Driver {
		t.Helper()
		d, err := New(Config{Mode: mode, Mounter: &mounter.Fake{}, Member: cachegroup.Config{NodeID: name,
			Dir: filepath.Join(t.TempDir(), "store"), Auth: auth, Replicas: 2, CacheSize: cacheSize,
			ClientOnly: clientOnly, Members: members}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Stop)
		return d
	}
	serve := func(d *Driver) (*httptest.Server, string) {
		srv := httptest.NewServer(d.member.PeerHandler())
		t.Cleanup(srv.Close)
		return srv, strings.TrimPrefix(srv.URL, "http://")
	}
	const mi = 1 << 20
	b := open(t, ModeAll, "b", 32*mi, false)
	srvB, addrB := serve(b)
	a := open(t, ModeAll, "a", 64*mi, false, "b="+addrB)
	_, addrA := serve(a)
	members := []string{"a=" + addrA, "b=" + addrB}
	drivers := map[string]*Driver{
		"member (mode all)": a,
		"client-only node":  open(t, ModeNode, "client", 0, true, members...),
		"controller":        open(t, ModeController, "controller", 0, false, members...),
	}
	capacity := func(d *Driver) int64 {
		resp, err := d.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAvailableCapacity()
	}
	// About (64 Mi + 32 Mi) / R=2: each store holds a few bytes already.
	capA, capB := a.member.Store().Capacity(), b.member.Store().Capacity()
	if capA <= 63*mi || capB <= 31*mi || capA > 64*mi || capB > 32*mi {
		t.Fatalf("members' stores may take %d and %d bytes, want about 64 Mi and 32 Mi", capA, capB)
	}
	for who, d := range drivers {
		if got := capacity(d); got != (capA+capB)/2 {
			t.Errorf("%s: GetCapacity %d, want %d (the members' %d and %d over R=2)", who, got, (capA+capB)/2, capA, capB)
		}
	}
	srvB.Close()
	// Only a is left: its capacity, each blob kept once.
	if got := capacity(drivers["controller"]); got != capA {
		t.Errorf("with b down, controller's GetCapacity %d, want %d", got, capA)
	}
}
