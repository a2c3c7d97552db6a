package e2e

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	icluster "github.com/cachegroup/cachegroup/internal/cluster"
)

// replicas is R, the copies of every blob the group keeps.
const replicas = icluster.DefaultReplicas

// mountFlags are the mount options of the test's build pods, as a
// StorageClass for ephemeral CI pods would give them.
var mountFlags = []string{"cache-group=default", "no-sharing"}

// cluster is the test's cache group on this machine (internal/cluster),
// with helpers that fail the test instead of returning errors.
type cluster struct {
	*icluster.Cluster
	t     *testing.T
	hosts []*member
}

// member is one host of the cluster and the driver process serving it.
type member struct {
	*icluster.Member
	c *cluster
}

// pod is a build pod's mount of a volume on a host.
type pod struct {
	*icluster.Pod
	m      *member
	vol    *csi.Volume
	target string
}

// newCluster checks the prerequisites (skipping without them), builds the
// driver, creates the run's directory and the bridge, and registers the
// teardown of everything the cluster will create.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	if err := icluster.Prerequisites(); err != nil {
		t.Skip("the cache group end-to-end test: " + err.Error())
	}
	// Named like a run directory, so that CleanStale removes the binary
	// if this process dies without cleaning up.
	binDir, err := os.MkdirTemp("", fmt.Sprintf("cge2e-%d-", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	bin, took, err := icluster.BuildDriver(binDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built the driver in %v", took.Round(time.Millisecond))
	cl, err := icluster.New(icluster.Config{Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{Cluster: cl, t: t}
	t.Cleanup(c.teardown)
	t.Logf("run directory %s, bridge %s on %s.0/24", cl.Dir, cl.Bridge, cl.Subnet)
	return c
}

// teardown stops every driver and removes everything the cluster made,
// keeping (and printing) the member logs when the test failed.
func (c *cluster) teardown() {
	failed := c.t.Failed()
	if failed {
		c.t.Log(c.LogSummary(40))
	}
	if err := c.Close(failed); err != nil {
		c.t.Errorf("teardown: %v", err)
	}
	if failed {
		c.t.Logf("member logs kept in %s", filepath.Join(c.Dir, "logs"))
	}
}

// writeSecret writes a fresh random secret file and returns its path.
func (c *cluster) writeSecret(name string) string {
	p, err := c.WriteSecret(name)
	if err != nil {
		c.t.Fatal(err)
	}
	return p
}

// addHost creates host short (namespace, veth pair, directories); the
// member is not started.
func (c *cluster) addHost(short string) *member {
	c.t.Helper()
	m, err := c.AddHost(short)
	if err != nil {
		c.t.Fatal(err)
	}
	w := &member{Member: m, c: c}
	c.hosts = append(c.hosts, w)
	return w
}

// membersFlag is the --members value listing ms.
func membersFlag(ms ...*member) string { return icluster.MembersFlag(inner(ms)...) }

// names returns the identities of ms.
func names(ms ...*member) []string { return icluster.Names(inner(ms)...) }

func inner(ms []*member) []*icluster.Member {
	out := make([]*icluster.Member, len(ms))
	for i, m := range ms {
		out[i] = m.Member
	}
	return out
}

// start runs m's driver in its namespace with the static member list
// members and the shared secret in secretFile, and waits until it answers
// CSI calls.
func (m *member) start(t *testing.T, members, secretFile string) {
	t.Helper()
	if err := m.Start(context.Background(), members, secretFile); err != nil {
		t.Fatal(err)
	}
}

// stop stops m's driver with SIGTERM (SIGKILL after 15 s).
func (m *member) stop(t *testing.T) {
	t.Helper()
	if err := m.Stop(); err != nil {
		t.Error(err)
	}
}

// kill kills m's driver with SIGKILL, as a crash or an OOM kill would.
func (m *member) kill(t *testing.T) {
	t.Helper()
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
}

// keepUp starts m again, with the flags it last ran with, if its driver
// is not running (an earlier failed step may have left it stopped).
func (m *member) keepUp(t *testing.T) {
	t.Helper()
	restarted, err := m.KeepUp(context.Background())
	if restarted {
		t.Logf("%s was not running; started it again", m.Name)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// restart stops m's driver and starts it with the member list members.
func (m *member) restart(t *testing.T, members string) {
	t.Helper()
	if err := m.Stop(); err != nil {
		t.Error(err)
	}
	m.start(t, members, m.c.Secret)
}

// running reports whether m's driver runs.
func (m *member) running() bool { return m.Running() }

// createVolume creates volume name through m's controller service.
func (m *member) createVolume(t *testing.T, name string, quota int64) *csi.Volume {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := m.CreateVolume(ctx, name, quota)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// mount does what the kubelet does for a pod on m using vol: stage the
// volume on the node (once per node), then publish it at a fresh target.
func (m *member) mount(t *testing.T, vol *csi.Volume, flags ...string) *pod {
	t.Helper()
	if len(flags) == 0 {
		flags = mountFlags
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := m.Mount(ctx, vol, flags...)
	if err != nil {
		t.Fatal(err)
	}
	return &pod{Pod: p, m: m, vol: vol, target: p.Target}
}

// unmount ends the pod: NodeUnpublishVolume on its node's current driver
// process, which moves the pod's writes into the outbox.
func (p *pod) unmount(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Unmount(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitCommitted waits until m's outbox is empty: every ended pod's writes
// are committed (or refused).
func (m *member) waitCommitted(t *testing.T, timeout time.Duration) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	took, err := m.WaitCommitted(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return took
}

// metricsText fetches m's /metrics.
func (m *member) metricsText() (string, error) { return m.MetricsText() }

// metric returns the sum of m's series of metric name whose labels include
// every "key=value" of labels (0 when there is none).
func (m *member) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, err := m.Metric(name, labels...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// parseMetric sums the samples of metric name in the Prometheus text format
// whose labels include every "key=value" of labels.
func parseMetric(text, name string, labels []string) float64 {
	return icluster.ParseMetric(text, name, labels)
}

// poll calls cond every interval until it reports done or timeout passes;
// it returns cond's last message when it times out.
func poll(timeout, interval time.Duration, cond func() (bool, string)) (bool, string) {
	return icluster.Poll(timeout, interval, cond)
}

// waitLive waits until every one of ms sees n live members (itself
// included).
func waitLive(t *testing.T, n int, ms ...*member) {
	t.Helper()
	if err := icluster.WaitLive(30*time.Second, n, inner(ms)...); err != nil {
		t.Fatal(err)
	}
}

// waitMembers waits until every one of ms counts n members, live or not
// (itself included).
func waitMembers(t *testing.T, n int, ms ...*member) {
	t.Helper()
	if err := icluster.WaitMembers(45*time.Second, n, inner(ms)...); err != nil {
		t.Fatal(err)
	}
}

// blobPath is where m's store keeps blob sum.
func (m *member) blobPath(sum string) string { return m.BlobPath(sum) }

// hasBlob reports whether m's store holds blob sum.
func (m *member) hasBlob(sum string) bool { return m.HasBlob(sum) }

// blobs returns the blobs in m's store with their link counts (more than
// one: a snapshot on the node links the blob).
func (m *member) blobs() (map[string]uint64, error) { return m.Blobs() }

// owners returns the members of group that own blob sum, in rendezvous
// order: the product's placement (cachegroup.Score), R of them.
func owners(sum string, group []string) []string { return icluster.Owners(sum, group, replicas) }

// byName returns the member called name among ms.
func byName(name string, ms ...*member) *member {
	for _, m := range ms {
		if m.Name == name {
			return m
		}
	}
	return nil
}

func lastN(s []string, n int) []string { return icluster.LastN(s, n) }

// movedTolerance is how far the measured fraction of copies that moved to
// a joining fourth member may be from the ideal 1/4 with n distinct blobs.
// Each blob lands on the newcomer when it is among the top R=2 of 4, with
// probability 1/2, independently: the newcomer's count is Binomial(n, 1/2),
// so the fraction count/(2n) has standard deviation 1/(4*sqrt(n)). Five
// standard deviations (a false alarm about once in 3.5 million runs), and
// never tighter than 0.05.
func movedTolerance(n int) float64 {
	return math.Max(0.05, 5/(4*math.Sqrt(float64(n))))
}
