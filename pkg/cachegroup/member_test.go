package cachegroup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/metrics"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
	dto "github.com/prometheus/client_model/go"
)

// member is one member of a test group, its peer server on loopback.
type member struct {
	*Member
	name string
	addr string
	srv  *http.Server
}

var testSecret = []byte("0123456789abcdef-test-secret")

// openMember opens, below a fresh directory, member name of a group "g" with
// replicas copies (a client of it if clientOnly, reaching the members of
// static) and runs it until the test ends.
func openMember(t testing.TB, name string, replicas int, clientOnly bool, static ...string) *Member {
	t.Helper()
	return runMember(t, Config{NodeID: name, Dir: t.TempDir(), Group: "g", Replicas: replicas, ClientOnly: clientOnly,
		Members: static, Auth: wire.NewSecretAuth(testSecret)})
}

// runMember opens the member of cfg and runs it until the test ends.
func runMember(t testing.TB, cfg Config) *Member {
	t.Helper()
	m, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go m.Run(ctx)
	t.Cleanup(func() {
		cancel()
		m.Close()
	})
	return m
}

// peerWrap, if set, wraps the peer handler of the members newGroup starts.
var peerWrap func(http.Handler) http.Handler

// newGroup starts n members on loopback that know each other, with R=2;
// weights, if given, are the members' placement weights in order.
func newGroup(t testing.TB, n int, weights ...float64) []*member {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for ownership of materialised files")
	}
	auth := wire.NewSecretAuth(testSecret)
	ms := make([]*member, n)
	for i := range ms {
		name := fmt.Sprintf("node-%c", 'a'+i)
		m := openMember(t, name, 2, false)
		if i < len(weights) {
			m.group.SetWeight(weights[i])
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var h http.Handler = m.PeerHandler()
		if peerWrap != nil {
			h = peerWrap(h)
		}
		srv := &http.Server{Handler: h}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		ms[i] = &member{Member: m, name: name, addr: ln.Addr().String(), srv: srv}
	}
	st := static(ms)
	for _, m := range ms {
		group.NewMembership(m.group, st, auth, time.Second).Refresh(context.Background())
		if got := len(m.group.Members()); got != n {
			t.Fatalf("%s sees %d members", m.name, got)
		}
	}
	return ms
}

// static is the member list of ms.
func static(ms []*member) group.Static {
	var st group.Static
	for _, m := range ms {
		st = append(st, group.Endpoint{Name: m.name, Addr: m.addr})
	}
	return st
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
func commitFiles(t testing.TB, m *member, vol volume.Volume, files map[string]string) {
	t.Helper()
	submit(t, m, vol, fmt.Sprintf("/pods/%d", time.Now().UnixNano()), writeFiles(t, files))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.node.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	if m.node.Stats.Commits.Load() == 0 {
		t.Fatalf("nothing committed on %s (failures %d)", m.name, m.node.Stats.CommitFailures.Load())
	}
}

// submit ends a pod's layer of vol on m whose upper directory holds what
// fill makes, as an overlay would have left it.
func submit(t testing.TB, m *member, vol volume.Volume, target string, fill func(upper string)) {
	t.Helper()
	upper, _, err := m.node.NewLayer(node.Layer{VolumeID: vol.ID, Target: target, Base: vol.Root, Commit: true})
	if err != nil {
		t.Fatal(err)
	}
	fill(upper)
	if err := m.node.Submit(target); err != nil {
		t.Fatal(err)
	}
}

// land submits a layer filled by fill, as submit does, waits up to within
// for m's node to commit it, and returns the volume's head.
func land(t testing.TB, m *member, vol volume.Volume, fill func(upper string), within time.Duration) volume.Volume {
	t.Helper()
	submit(t, m, vol, "/pods/import", fill)
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := m.node.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	head, err := m.group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	return head
}

func TestGroupCommitOnOneNodeReadOnAnother(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	a, c := ms[0], ms[2]
	vol, err := a.group.CreateVolume(ctx, volume.Spec{Name: "m2", Quota: 1 << 30}, "")
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
		d := cas.Sum([]byte(content))
		for _, o := range a.group.Owners(d) {
			if !memberByName(ms, o.Name()).store.Has(d) {
				t.Fatalf("owner %s lacks blob %s", o.Name(), d)
			}
		}
	}
	dir, err := c.node.Materialize(ctx, head.Root, node.Want{VolumeID: vol.ID})
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
		defer func(m int64) { group.RangedMin = m }(group.RangedMin)
		group.RangedMin = 1 << 20
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
	d := cas.Sum(content)
	size := int64(len(content))
	owners := ms[0].group.Owners(d)
	for _, o := range owners {
		if _, err := memberByName(ms, o.Name()).store.Put(bytesReader(content), d); err != nil {
			t.Fatal(err)
		}
	}
	if ranged {
		c := newClient(t, ms)
		if _, err := c.group.FetchLarge(ctx, d, size, c.group.Sources(d)); err != nil {
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
	if err := os.WriteFile(first.store.Path(d), wrong, 0o444); err != nil {
		t.Fatal(err)
	}
	var told []string // what a hydration would tell its volume's claim
	hooked := group.OnCorrupt(ctx, func(bad cas.Digest, from string) { told = append(told, bad.String()+" from "+from) })
	if _, err := reader.group.FetchLarge(hooked, d, size, reader.group.Sources(d)); err != nil {
		t.Fatal(err)
	}
	if want := d.String() + " from " + first.name; len(told) != 1 || told[0] != want {
		t.Fatalf("told of corrupt copies %v, want [%s]", told, want)
	}
	got, err := os.ReadFile(reader.store.Path(d))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("reader got %d wrong bytes, %v", len(got), err)
	}
	if v := counterValue(t, reader.group.Metrics(), "cachegroup_corrupt_blobs_total"); v != 1 {
		t.Fatalf("corrupt counter %v, want 1", v)
	}
	// The reader has the owner drop its bad copy and gives it the good one.
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := os.ReadFile(first.store.Path(d))
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
	wrong := wire.NewClient(ms[0].name, ms[0].addr, "intruder", wire.NewSecretAuth([]byte("not-the-group-secret")))
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
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20}, "")
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

func counterValue(t *testing.T, m *metrics.Set, name string, label ...string) float64 {
	t.Helper()
	mfs, err := m.Gather()
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
func newClient(t testing.TB, ms []*member) *Member {
	t.Helper()
	var list []string
	for _, m := range ms {
		list = append(list, m.name+"="+m.addr)
	}
	c := openMember(t, "client", 2, true, list...)
	if got := len(c.group.Members()); got != len(ms) {
		t.Fatalf("client sees %d members", got)
	}
	return c
}

func TestReconcileKeepsTheBlobsOfCommitsInProgress(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	// A blob on a member that does not own it, already at both owners:
	// re-replication would drop this copy.
	content := []byte("blob")
	d := cas.Sum(content)
	_, _, x := roles(ms, ms[0].group.Owners(d))
	for _, m := range append([]*member{x}, ms...) {
		if _, err := m.store.Put(bytesReader(content), d); err != nil {
			t.Fatal(err)
		}
	}
	// The node tier's Pinned is the reconciler's inUse (see Run); node's
	// TestPinnedBlobs shows it holds a commit's blobs.
	pinned := true
	inUse := func(b cas.Digest) bool { return pinned && b == d }
	if _, err := x.group.Reconcile(ctx, inUse); err != nil {
		t.Fatal(err)
	}
	if !x.store.Has(d) {
		t.Fatal("a pinned blob was dropped")
	}
	pinned = false
	p, err := x.group.Reconcile(ctx, inUse)
	if err != nil {
		t.Fatal(err)
	}
	if x.store.Has(d) || p.Dropped == 0 {
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
	vol, err := a.group.CreateVolume(ctx, volume.Spec{Name: "shared", Quota: 1 << 30}, "")
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
		dir, err := m.node.Materialize(ctx, head.Root, node.Want{VolumeID: vol.ID, Sharing: sharing})
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
	some := cas.Sum([]byte(files["lib7/lib.jar"]))
	remote := wire.NewClient(d.name, d.addr, e.name, wire.NewSecretAuth(testSecret))
	if _, err := remote.Fetch(ctx, some, false); !errors.Is(err, wire.ErrNotOffered) {
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
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20}, "")
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
func roles(ms []*member, placed []group.Peer) (first, second, other *member) {
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
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20}, "")
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
		v, err := m.home.Volume(ctx, vol.ID)
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
	primary, second, committer := roles(ms, ms[0].group.Homes(volume.ID(name)))
	// Created while the primary is away: only the second home has it.
	primary.srv.Close()
	vol, err := committer.group.CreateVolume(ctx, volume.Spec{Name: name, Quota: 1 << 20}, "")
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
		st := static(ms)
		for i := range st {
			if st[i].Name == second.name {
				st[i].Addr = secondAt
			}
		}
		group.NewMembership(primary.group, st, wire.NewSecretAuth(testSecret), time.Second).Refresh(ctx)
	}
	view(nowhere)

	submit(t, committer, vol, "/pods/waits", writeFiles(t, map[string]string{"kept": "acknowledged"}))
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

// A node whose copy of a tree object went bad (a disk error, a hand in the
// store) drops it and fetches it again: its hydration still builds the right
// tree.
func TestAHydrationRefetchesAWrongLocalTree(t *testing.T) {
	ms := newGroup(t, 2)
	ctx := context.Background()
	vol, err := ms[0].group.CreateVolume(ctx, volume.Spec{Name: "trees", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	v := commitOver(t, ms[0], vol, writeFiles(t, map[string]string{"a/b/f": "right"}))
	var sub cas.Digest
	for _, m := range ms {
		if root, err := tree.Load(m.store, v.Root); err == nil {
			sub = root.Entries[0].Digest
			break
		}
	}
	if sub.IsZero() {
		t.Fatal("no member has the head's tree")
	}
	c := newClient(t, ms)
	os.MkdirAll(filepath.Dir(c.store.Path(sub)), 0o755)
	if err := os.WriteFile(c.store.Path(sub), []byte("not the tree of a/"), 0o444); err != nil {
		t.Fatal(err)
	}
	dir, err := c.node.Materialize(ctx, v.Root, node.Want{VolumeID: vol.ID})
	if err != nil {
		t.Fatalf("hydration over a wrong copy of a/'s tree: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "a/b/f")); err != nil || string(b) != "right" {
		t.Fatalf("a/b/f: %q %v", b, err)
	}
	if _, err := tree.Load(c.store, sub); err != nil {
		t.Fatalf("the node's copy of a/'s tree: %v", err)
	}
}
