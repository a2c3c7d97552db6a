package cachegroup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// member is one member of a test group: a store, a node tier and a peer
// server on loopback.
type member struct {
	name  string
	local *Local
	group *Group
	node  *Node
	addr  string
	srv   *http.Server
}

var testSecret = []byte("0123456789abcdef-test-secret")

// newGroup starts n members on loopback that know each other, with R=2;
// weights, if given, are the members' placement weights in order.
func newGroup(t testing.TB, n int, weights ...float64) []*member {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for ownership of materialised files")
	}
	auth := NewSecretAuth(testSecret)
	ms := make([]*member, n)
	for i := range ms {
		name := fmt.Sprintf("node-%c", 'a'+i)
		node := openMember(t, name, 2, false)
		g, l := node.group, node.group.Local()
		if i < len(weights) {
			g.SetWeight(weights[i])
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ps := NewServer(g, auth)
		ps.Offer, ps.Through = node.Offer, node.Through
		srv := &http.Server{Handler: ps.Handler()}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		go node.Run(ctx)
		ms[i] = &member{name: name, local: l, group: g, node: node, addr: ln.Addr().String(), srv: srv}
	}
	var st Static
	for _, m := range ms {
		st = append(st, Endpoint{Name: m.name, Addr: m.addr})
	}
	for _, m := range ms {
		NewMembership(m.group, st, auth, time.Second).Refresh(context.Background())
		if got := len(m.group.Members()); got != n {
			t.Fatalf("%s sees %d members", m.name, got)
		}
	}
	return ms
}

// writeFiles returns a layer filler that writes files (path: content).
func writeFiles(t testing.TB, files map[string]string) func(upper string) {
	return func(upper string) {
		for p, c := range files {
			os.MkdirAll(filepath.Dir(filepath.Join(upper, p)), 0o755)
			if err := os.WriteFile(filepath.Join(upper, p), []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// commitFiles commits files through m's node tier, as a pod would.
func commitFiles(t testing.TB, m *member, vol Volume, files map[string]string) {
	t.Helper()
	layerWith(t, m.node, vol, fmt.Sprintf("/pods/%d", time.Now().UnixNano()), writeFiles(t, files))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.node.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if m.node.Stats.Commits.Load() == 0 {
		t.Fatalf("nothing committed on %s (failures %d)", m.name, m.node.Stats.CommitFailures.Load())
	}
}

func TestGroupCommitOnOneNodeReadOnAnother(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	a, c := ms[0], ms[2]
	vol, err := a.group.CreateVolume(ctx, VolumeSpec{Name: "m2", Quota: 1 << 30}, "")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for i := range 50 {
		files[fmt.Sprintf("org/lib%d/lib.jar", i)] = fmt.Sprintf("content %d", i)
	}
	commitFiles(t, a, vol, files)

	head, err := c.group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	if head.Count != 101 { // org, 50 directories and 50 files
		t.Fatalf("head on C: %d entries", head.Count)
	}
	// The head is at both homes, and every blob at its two owners.
	for _, h := range a.group.Homes(vol.ID) {
		v, err := h.Volume(ctx, vol.ID)
		if err != nil || v.Root != head.Root {
			t.Fatalf("home %s: %v %v", h.Name(), v.Root, err)
		}
	}
	for _, content := range files {
		d := Sum([]byte(content))
		for _, o := range a.group.Owners(d) {
			if !memberByName(ms, o.Name()).local.Store().Has(d) {
				t.Fatalf("owner %s lacks blob %s", o.Name(), d)
			}
		}
	}
	dir, err := c.node.Snapshot(ctx, head.Root, Want{VolumeID: vol.ID})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil || string(got) != want {
			t.Fatalf("%s on C: %q %v", p, got, err)
		}
	}
}

func memberByName(ms []*member, name string) *member {
	for _, m := range ms {
		if m.name == name {
			return m
		}
	}
	return nil
}

func TestGroupNeverServesWrongBytes(t *testing.T) {
	t.Run("small blob", func(t *testing.T) { testWrongBytes(t, []byte("the right bytes"), false) })
	t.Run("large blob in ranges", func(t *testing.T) {
		defer func(m int64) { rangedMin = m }(rangedMin)
		rangedMin = 1 << 20
		content := make([]byte, 3<<20+17)
		for i := range content {
			content[i] = byte(i * 7 / 3)
		}
		testWrongBytes(t, content, true)
	})
}

// testWrongBytes stores content at its two owners, flips bytes of the first
// owner's copy and checks that a reader gets the right bytes, counts the bad
// copy once and has it repaired. A large blob is first fetched in ranges by a
// client while both copies are good (both owners serve a part), then, after
// the flip, the ranges fail verification and the reader falls back to one
// owner after the other.
func testWrongBytes(t *testing.T, content []byte, ranged bool) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	d := Sum(content)
	size := int64(len(content))
	owners := ms[0].group.Owners(d)
	for _, o := range owners {
		if _, err := memberByName(ms, o.Name()).local.Store().Put(bytesReader(content), d); err != nil {
			t.Fatal(err)
		}
	}
	if ranged {
		c := newClient(t, ms)
		if _, err := c.fetch(ctx, d, size, c.group.Sources(d)); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(c.store.Path(d)); err != nil || !bytes.Equal(got, content) {
			t.Fatalf("client got %d bytes, %v", len(got), err)
		}
		for _, o := range owners {
			m := memberByName(ms, o.Name())
			if v := counterValue(t, m.group.Metrics(), "cachegroup_served_bytes_total"); v <= 0 || v >= float64(size) {
				t.Fatalf("owner %s served %v bytes of %d: not a share", m.name, v, size)
			}
		}
	}
	// Flip bytes of the first owner's copy, keeping its size.
	first, _, reader := roles(ms, owners)
	wrong := bytes.ToUpper(content)
	wrong[len(wrong)/2]++
	if err := os.WriteFile(first.local.Store().Path(d), wrong, 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := reader.node.fetch(ctx, d, size, reader.group.Sources(d)); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(reader.local.Store().Path(d))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("reader got %d wrong bytes, %v", len(got), err)
	}
	if v := counterValue(t, reader.group.Metrics(), "cachegroup_corrupt_blobs_total"); v != 1 {
		t.Fatalf("corrupt counter %v, want 1", v)
	}
	// The reader has the owner drop its bad copy and gives it the good one.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := os.ReadFile(first.local.Store().Path(d))
		if err == nil && bytes.Equal(got, content) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bad copy not repaired: %d bytes, %v", len(got), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestGroupRefusesUnauthenticatedPeers(t *testing.T) {
	ms := newGroup(t, 2)
	resp, err := http.Get("http://" + ms[0].addr + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no credentials: %s", resp.Status)
	}
	wrong := NewRemote(ms[0].name, ms[0].addr, "intruder", NewSecretAuth([]byte("not-the-group-secret")))
	if _, err := wrong.Health(context.Background()); err == nil {
		t.Fatal("wrong secret accepted")
	}
	if v := counterValue(t, ms[0].group.Metrics(), "cachegroup_refused_requests_total"); v != 2 {
		t.Fatalf("refused counter %v, want 2", v)
	}
}

func TestGroupSurvivesAHomeDown(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, VolumeSpec{Name: "v", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	commitFiles(t, ms[0], vol, map[string]string{"a": "1"})
	primary, _, client := roles(ms, ms[0].group.Homes(vol.ID))
	primary.srv.Close()
	// The next commit fails over to the second home, which had the head.
	cur, err := client.group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	commitFiles(t, client, cur, map[string]string{"b": "2"})
	head, err := client.group.Volume(ctx, vol.ID)
	if err != nil || head.Count != 2 {
		t.Fatalf("after failover: %d entries, %v", head.Count, err)
	}
	if client.group.Live(primary.name) {
		t.Fatal("the stopped home is still thought live")
	}
}

func TestEndpointSlicesReadyWithNodeNames(t *testing.T) {
	yes, no := true, false
	node := func(s string) *string { return &s }
	slices := []*discoveryv1.EndpointSlice{{Endpoints: []discoveryv1.Endpoint{
		{Addresses: []string{"10.0.0.1"}, NodeName: node("n1"), Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
		{Addresses: []string{"10.0.0.2"}, NodeName: node("n2"), Conditions: discoveryv1.EndpointConditions{Ready: &no}},
		{Addresses: []string{"10.0.0.3"}},
		{Addresses: []string{"10.0.0.4"}, NodeName: node("n1")},
	}}}
	eps := endpointsOf(slices, "7600")
	if len(eps) != 1 || eps[0].Name != "n1" || eps[0].Addr != "10.0.0.1:7600" {
		t.Fatalf("endpoints %v", eps)
	}
}

// TestPlacementMovesOnlyTheNewMembersShare checks, on a simulated 100-member
// ring, that a joining member takes about 1/(n+1) of the blob copies and
// nothing else moves.
func TestPlacementMovesOnlyTheNewMembersShare(t *testing.T) {
	moved, ideal := MovedFraction(100, 2, 20000)
	if math.Abs(moved-ideal) > 0.1*ideal+0.002 {
		t.Fatalf("moved %.4f of copies, ideal %.4f", moved, ideal)
	}
}

func counterValue(t *testing.T, m *Metrics, name string, label ...string) float64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, x := range mf.GetMetric() {
				if len(label) == 0 || slices.ContainsFunc(x.GetLabel(), func(l *dto.LabelPair) bool { return l.GetValue() == label[0] }) {
					sum += x.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// newClient returns the node tier of a client-only node with an empty store
// that reaches the members ms.
func newClient(t testing.TB, ms []*member) *Node {
	t.Helper()
	node := openMember(t, "client", 2, true)
	g := node.group
	var st Static
	for _, m := range ms {
		st = append(st, Endpoint{Name: m.name, Addr: m.addr})
	}
	NewMembership(g, st, NewSecretAuth(testSecret), time.Second).Refresh(context.Background())
	if got := len(g.Members()); got != len(ms) {
		t.Fatalf("client sees %d members", got)
	}
	return node
}

func TestReconcileKeepsTheBlobsOfCommitsInProgress(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	// A blob on a member that does not own it, already at both owners:
	// re-replication would drop this copy.
	content := []byte("blob")
	d := Sum(content)
	_, _, x := roles(ms, ms[0].group.Owners(d))
	for _, m := range append([]*member{x}, ms...) {
		if _, err := m.local.Store().Put(bytesReader(content), d); err != nil {
			t.Fatal(err)
		}
	}
	x.node.pin([]Digest{d})
	if _, err := x.group.Reconcile(ctx, x.node.Pinned); err != nil {
		t.Fatal(err)
	}
	if !x.local.Store().Has(d) {
		t.Fatal("a pinned blob was dropped")
	}
	x.node.unpin([]Digest{d})
	p, err := x.group.Reconcile(ctx, x.node.Pinned)
	if err != nil {
		t.Fatal(err)
	}
	if x.local.Store().Has(d) || p.Dropped == 0 {
		t.Fatalf("the unpinned copy was kept (pass %+v)", p)
	}
}

func TestSharingOffersNodeCopiesNoSharingNever(t *testing.T) {
	// A, B and C hold the data; D, E, F and G are build nodes that own
	// nothing (a weight too small to win any blob).
	const none = 1e-9
	ms := newGroup(t, 7, 1, 1, 1, none, none, none, none)
	a, d, e, f, g := ms[0], ms[3], ms[4], ms[5], ms[6]
	ctx := context.Background()
	vol, err := a.group.CreateVolume(ctx, VolumeSpec{Name: "shared", Quota: 1 << 30}, "")
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for i := range 200 {
		files[fmt.Sprintf("lib%d/lib.jar", i)] = fmt.Sprintf("jar %d %s", i, bytes.Repeat([]byte{'x'}, i*13))
	}
	commitFiles(t, a, vol, files)
	head, err := a.group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	stage := func(m *member, sharing bool) {
		t.Helper()
		dir, err := m.node.Snapshot(ctx, head.Root, Want{VolumeID: vol.ID, Sharing: sharing})
		if err != nil {
			t.Fatal(err)
		}
		for p, want := range files {
			if got, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(got) != want {
				t.Fatalf("%s on %s: %q, %v", p, m.name, got, err)
			}
		}
	}
	servedAsPeer := func(ms ...*member) (n float64) {
		for _, m := range ms {
			n += counterValue(t, m.group.Metrics(), "cachegroup_served_bytes_total", "peer")
		}
		return n
	}

	// no-sharing: D and E fetch everything from the owners, and their
	// copies are private: nobody is offered them.
	stage(d, false)
	stage(e, false)
	if n := servedAsPeer(ms...); n != 0 {
		t.Fatalf("no-sharing: %v bytes served as peer", n)
	}
	if n := counterValue(t, e.group.Metrics(), "cachegroup_fetch_bytes_total", "peer"); n != 0 {
		t.Fatalf("no-sharing: E fetched %v bytes from peers", n)
	}
	some := Sum([]byte(files["lib7/lib.jar"]))
	remote := NewRemote(d.name, d.addr, e.name, NewSecretAuth(testSecret))
	if _, err := remote.Fetch(ctx, some); !errors.Is(err, errNotOffered) {
		t.Fatalf("D served a private copy: %v", err)
	}

	// sharing: F stages first and holds every blob; G, staging after it,
	// fetches from F the blobs F ranks first for among the two, and only
	// the rest from the owners.
	stage(f, true)
	stage(g, true)
	fromPeer := counterValue(t, g.group.Metrics(), "cachegroup_fetch_bytes_total", "peer")
	fromOwner := counterValue(t, g.group.Metrics(), "cachegroup_fetch_bytes_total", "owner")
	if fromPeer == 0 || servedAsPeer(f) != fromPeer {
		t.Fatalf("sharing: G fetched %v bytes from peers, F served %v as peer", fromPeer, servedAsPeer(f))
	}
	if fromOwner == 0 {
		t.Fatal("sharing: G fetched nothing from the owners: the ranking is not shared")
	}
	if n := servedAsPeer(d, e); n != 0 {
		t.Fatalf("no-sharing copies on D and E were served: %v bytes", n)
	}
	t.Logf("G fetched %.0f bytes from its peer F and %.0f from the owners", fromPeer, fromOwner)
}

// A member's view of who is up lags (a member started with the others may
// have probed them before they listened): a volume whose homes it thinks
// down is still found, and only homes that cannot be asked make it
// unavailable, never "not found".
func TestStaleLivenessDoesNotHideVolumes(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, VolumeSpec{Name: "v", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	snap, err := ms[0].group.CreateSnapshot(ctx, "s", vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	const missing = "vol-000000000000000000000000"
	if _, err := ms[0].group.Volume(ctx, missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a volume that does not exist: %v, want not found", err)
	}
	_, _, client := roles(ms, ms[0].group.Homes(vol.ID))
	othersDown := func() {
		for _, m := range ms {
			if m != client {
				client.group.SetLive(m.name, false)
			}
		}
	}
	othersDown()
	if _, err := client.group.Volume(ctx, vol.ID); err != nil {
		t.Fatalf("volume with its homes thought down: %v", err)
	}
	if _, err := client.group.Snapshot(ctx, snap.ID); err != nil {
		t.Fatalf("snapshot with its homes thought down: %v", err)
	}
	for _, h := range client.group.Homes(vol.ID) {
		if !client.group.Live(h.Name()) {
			t.Errorf("home %s answered but is still thought down", h.Name())
		}
	}
	othersDown()
	if _, err := client.group.CreateSnapshot(ctx, "s2", vol.ID); err != nil {
		t.Fatalf("create a snapshot with its homes thought down: %v", err)
	}

	for _, h := range client.group.Homes(vol.ID) {
		memberByName(ms, h.Name()).srv.Close()
	}
	_, err = client.group.Volume(ctx, vol.ID)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotFound) {
		t.Fatalf("volume with every home stopped: %v, want unavailable", err)
	}
	// Two of three members are stopped, so one home at least of any volume
	// is: a volume no running home has may still be at a stopped one.
	_, err = client.group.Volume(ctx, missing)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrNotFound) {
		t.Fatalf("a volume no running home has: %v, want unavailable", err)
	}
}

// roles returns, in a group of three with R=2, the two members placed for
// something (a volume's homes or a blob's owners, first first) and the
// member that is neither.
func roles(ms []*member, placed []Peer) (first, second, other *member) {
	first, second = memberByName(ms, placed[0].Name()), memberByName(ms, placed[1].Name())
	for _, m := range ms {
		if m != first && m != second {
			other = m
		}
	}
	return first, second, other
}

// restart serves m's peer API again on its address, as a member process
// restarted in place would.
func restart(t *testing.T, m *member) {
	t.Helper()
	ln, err := net.Listen("tcp", m.addr)
	if err != nil {
		t.Fatal(err)
	}
	m.srv = &http.Server{Handler: m.srv.Handler}
	go m.srv.Serve(ln)
	t.Cleanup(func() { m.srv.Close() })
}

// A primary that was away while the second home took commits must not
// apply the next commit to the head it had: that commit's generation would
// tie with the other home's and one of the two would be lost.
func TestPrimaryBackFromAnOutageCatchesUpFirst(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, VolumeSpec{Name: "v", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	primary, second, committer := roles(ms, ms[0].group.Homes(vol.ID))
	commitFiles(t, committer, vol, map[string]string{"a": "1"})

	primary.srv.Close()
	commitFiles(t, committer, vol, map[string]string{"b": "2"})
	restart(t, primary)
	committer.group.SetLive(primary.name, true) // as its next probe would
	commitFiles(t, committer, vol, map[string]string{"c": "3"})

	for _, m := range []*member{primary, second} {
		v, err := m.local.Volume(ctx, vol.ID)
		if err != nil {
			t.Fatal(err)
		}
		if v.Count != 3 {
			t.Errorf("home %s: %d entries, want a, b and c", m.name, v.Count)
		}
	}
}

// A pod's writes to a volume whose primary lacks the head and cannot reach
// the home that has it (a partition between the two) wait until it can;
// they are never dropped as written to a deleted volume.
func TestCommitWaitsForTheHomeThatHasTheVolume(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	name := "v"
	primary, second, committer := roles(ms, ms[0].group.Homes(VolumeID(name)))
	// Created while the primary is away: only the second home has it.
	primary.srv.Close()
	vol, err := committer.group.CreateVolume(ctx, VolumeSpec{Name: name, Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	restart(t, primary)
	committer.group.SetLive(primary.name, true)
	// The primary reaches the second home at an address nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nowhere := ln.Addr().String()
	ln.Close()
	view := func(secondAt string) {
		var st Static
		for _, m := range ms {
			addr := m.addr
			if m == second {
				addr = secondAt
			}
			st = append(st, Endpoint{Name: m.name, Addr: addr})
		}
		NewMembership(primary.group, st, NewSecretAuth(testSecret), time.Second).Refresh(ctx)
	}
	view(nowhere)

	layerWith(t, committer.node, vol, "/pods/waits", writeFiles(t, map[string]string{"kept": "acknowledged"}))
	for deadline := time.Now().Add(10 * time.Second); committer.node.Stats.CommitFailures.Load() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no commit attempt failed while the primary could not reach the home that has the volume (the layer was dropped?)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if committer.node.Stats.Commits.Load() != 0 {
		t.Fatal("committed while the primary lacked the head")
	}

	view(second.addr)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := committer.node.WaitIdle(wctx); err != nil {
		t.Fatal(err)
	}
	head, err := committer.group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	if head.Count != 1 || committer.node.Stats.Commits.Load() != 1 {
		t.Fatalf("after the partition: %d entries, %d commits", head.Count, committer.node.Stats.Commits.Load())
	}
}
