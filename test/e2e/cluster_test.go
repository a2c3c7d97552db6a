package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/cachegroup/cachegroup/internal/csiharness"
	"github.com/cachegroup/cachegroup/pkg/cachegroup"
)

// The ports every member listens on, each on its own address.
const (
	peerPort    = 7600
	metricsPort = 9808
	// replicas is R, the copies of every blob the group keeps.
	replicas = 2
)

// mountFlags are the mount options of the test's build pods, as a
// StorageClass for ephemeral CI pods would give them.
var mountFlags = []string{"cache-group=default", "no-sharing"}

// cluster is a set of hosts on one machine: a network namespace each, linked
// to a bridge in the root namespace by a veth pair, and on each a member
// (the driver binary) with its own store. Everything it creates lives below
// dir or carries the test process's PID in its name, and is removed by
// teardown.
type cluster struct {
	t      *testing.T
	bin    string // the driver binary, built from the current code
	dir    string // everything of this run
	secret string // the group's shared-secret file
	pid    int
	bridge string
	subnet string // first three octets of the test subnet, "10.213.N"
	hosts  []*member
}

// member is one host of the cluster and the driver process serving it.
type member struct {
	c       *cluster
	short   string // "a"
	name    string // the member's identity (--node-id)
	ns      string // network namespace
	veth    string // root-namespace end of its veth pair
	ip      string
	peer    string // HOST:PORT of the peer protocol
	metrics string // HOST:PORT of /metrics
	store   string
	logPath string
	wrapper string // runs the driver binary inside ns

	d      *csiharness.Driver // nil while stopped
	staged map[string]string  // volume id -> staging path
	pods   int
	// The member list and secret file it last started with.
	lastMembers, lastSecret string
}

// command runs name with args and returns its combined output; the error
// names the command and carries the output.
func command(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// newCluster checks the prerequisites (skipping without them), builds the
// driver, creates the run's directory and the bridge, and registers the
// teardown of everything the cluster will create.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the cache group end-to-end test creates network namespaces and mounts overlays: run it as root")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the %s command is missing: the end-to-end test needs it to put each member in its own network namespace", tool)
		}
	}
	c := &cluster{t: t, pid: os.Getpid()}
	cleanStale()
	var err error
	if c.dir, err = os.MkdirTemp("", fmt.Sprintf("cge2e-%d-", c.pid)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.teardown)
	for _, sub := range []string{"bin", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c.bin = buildDriver(t, filepath.Join(c.dir, "bin"))
	c.secret = c.writeSecret("secret")

	c.subnet, err = freeSubnet(c.pid)
	if err != nil {
		t.Fatal(err)
	}
	c.bridge = fmt.Sprintf("cgbr%d", c.pid)
	if linkExists(c.bridge) { // left by an earlier process with this PID
		command("ip", "link", "del", c.bridge)
	}
	for _, args := range [][]string{
		{"link", "add", c.bridge, "type", "bridge"},
		{"addr", "add", c.subnet + ".254/24", "dev", c.bridge},
		{"link", "set", c.bridge, "up"},
	} {
		if _, err := command("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("run directory %s, bridge %s on %s.0/24", c.dir, c.bridge, c.subnet)
	return c
}

// buildDriver builds cmd/cachegroup-csi from the module this test is in,
// so the test always runs the current code.
func buildDriver(t *testing.T, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command to build the driver with: %v", err)
	}
	bin := filepath.Join(dir, "cachegroup-csi")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/cachegroup-csi")
	cmd.Dir = moduleRoot(t)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the driver: %v\n%s", err, out)
	}
	t.Logf("built the driver in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// moduleRoot returns the directory of the repository's go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			t.Fatalf("no go.mod above %s", dir)
		}
	}
}

// writeSecret writes a fresh 32-byte random secret (hex) to a file below the
// run's directory and returns its path.
func (c *cluster) writeSecret(name string) string {
	b := make([]byte, 32)
	rand.Read(b)
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// freeSubnet picks a /24 in 10.213.0.0/16 that no route of this machine
// covers yet, starting from one derived from pid.
func freeSubnet(pid int) (string, error) {
	out, err := command("ip", "-4", "route", "show", "table", "all")
	if err != nil {
		return "", err
	}
	for i := range 250 {
		s := fmt.Sprintf("10.213.%d", (pid+i)%250+1)
		if !strings.Contains(out, s+".") {
			return s, nil
		}
	}
	return "", errors.New("no free /24 in 10.213.0.0/16")
}

// alive reports whether process pid exists.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// cleanStale removes what an earlier run of this test left behind when it
// could not clean up (a test binary killed by its timeout runs no cleanup):
// namespaces, links and directories named after a PID that no longer runs.
// The drivers of such a run got SIGTERM when it died (Pdeathsig). Runs of
// other live processes are left alone: several may run at once, each on its
// own subnet.
func cleanStale() {
	if out, err := command("ip", "netns", "list"); err == nil {
		re := regexp.MustCompile(`^cgtest-(\d+)-[a-z]+`)
		for _, line := range strings.Split(out, "\n") {
			if m := re.FindStringSubmatch(line); m != nil {
				if pid, _ := strconv.Atoi(m[1]); !alive(pid) {
					command("ip", "netns", "del", m[0])
				}
			}
		}
	}
	if out, err := command("ip", "-o", "link", "show"); err == nil {
		re := regexp.MustCompile(`^\d+: (cg(?:br|v)(\d+)[a-z]?)[@:]`)
		for _, line := range strings.Split(out, "\n") {
			if m := re.FindStringSubmatch(line); m != nil {
				if pid, _ := strconv.Atoi(m[2]); !alive(pid) {
					command("ip", "link", "del", m[1])
				}
			}
		}
	}
	// A run's directory: its mounts and stores go, its logs (small) stay.
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "cge2e-*"))
	re := regexp.MustCompile(`^cge2e-(\d+)-`)
	for _, d := range dirs {
		if m := re.FindStringSubmatch(filepath.Base(d)); m != nil {
			if pid, _ := strconv.Atoi(m[1]); !alive(pid) {
				if _, err := csiharness.UnmountUnder(d); err != nil {
					continue
				}
				ents, _ := os.ReadDir(d)
				for _, e := range ents {
					if e.Name() != "logs" {
						os.RemoveAll(filepath.Join(d, e.Name()))
					}
				}
			}
		}
	}
}

// addHost creates host short: a network namespace with a veth pair to the
// bridge and the next address of the subnet, and the member's directories.
// The member is not started.
func (c *cluster) addHost(short string) *member {
	c.t.Helper()
	m := &member{
		c:       c,
		short:   short,
		name:    "node-" + short,
		ns:      fmt.Sprintf("cgtest-%d-%s", c.pid, short),
		veth:    fmt.Sprintf("cgv%d%s", c.pid, short),
		ip:      fmt.Sprintf("%s.%d", c.subnet, len(c.hosts)+1),
		store:   filepath.Join(c.dir, short, "store"),
		logPath: filepath.Join(c.dir, "logs", short+".log"),
		wrapper: filepath.Join(c.dir, "bin", "in-"+short),
		staged:  map[string]string{},
	}
	m.peer = fmt.Sprintf("%s:%d", m.ip, peerPort)
	m.metrics = fmt.Sprintf("%s:%d", m.ip, metricsPort)
	c.hosts = append(c.hosts, m) // before creating anything: teardown removes it
	// Names carry this process's PID: one that exists is left by an earlier
	// process that had the same PID.
	if _, err := os.Stat("/run/netns/" + m.ns); err == nil {
		command("ip", "netns", "del", m.ns)
	}
	if linkExists(m.veth) {
		command("ip", "link", "del", m.veth)
	}
	if _, err := command("ip", "netns", "add", m.ns); err != nil {
		c.t.Fatal(err)
	}
	for _, args := range [][]string{
		{"link", "add", m.veth, "type", "veth", "peer", "name", "eth0", "netns", m.ns},
		{"link", "set", m.veth, "master", c.bridge, "up"},
		{"-n", m.ns, "addr", "add", m.ip + "/24", "dev", "eth0"},
		{"-n", m.ns, "link", "set", "eth0", "up"},
		{"-n", m.ns, "link", "set", "lo", "up"},
	} {
		if _, err := command("ip", args...); err != nil {
			c.t.Fatal(err)
		}
	}
	// nsenter, not `ip netns exec`: the latter unshares the mount namespace,
	// which would hide the driver's mounts from the test (and the kubelet).
	// nsenter enters the network namespace and execs the driver, so the PID
	// the harness sees is the driver's.
	script := fmt.Sprintf("#!/bin/sh\nexec nsenter --net=/run/netns/%s -- %s \"$@\"\n", m.ns, c.bin)
	if err := os.WriteFile(m.wrapper, []byte(script), 0o755); err != nil {
		c.t.Fatal(err)
	}
	for _, d := range []string{m.store, filepath.Join(c.dir, short, "kubelet")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			c.t.Fatal(err)
		}
	}
	return m
}

// membersFlag is the --members value listing ms.
func membersFlag(ms ...*member) string {
	var items []string
	for _, m := range ms {
		items = append(items, m.name+"="+m.peer)
	}
	return strings.Join(items, ",")
}

// names returns the identities of ms.
func names(ms ...*member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.name)
	}
	return out
}

// start runs m's driver in its namespace with the static member list
// members and the shared secret in secretFile, and waits until it answers
// CSI calls.
func (m *member) start(t *testing.T, members, secretFile string) {
	t.Helper()
	if m.d != nil {
		t.Fatalf("%s is already running", m.name)
	}
	args := []string{
		"--members=" + members,
		"--peer-address=" + m.peer,
		"--peer-secret-file=" + secretFile,
		"--replicas=" + strconv.Itoa(replicas),
		"--metrics-address=" + m.metrics,
		"-v=2",
	}
	if f, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		fmt.Fprintf(f, "===== e2e: %s start %s in %s: %s\n", time.Now().Format(time.RFC3339Nano), m.name, m.ns, strings.Join(args, " "))
		f.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	d, err := csiharness.Start(ctx, csiharness.Config{
		Binary:       m.wrapper,
		StoreDir:     m.store,
		NodeID:       m.name,
		Mode:         "all",
		Args:         args,
		LogPath:      m.logPath,
		StartTimeout: 30 * time.Second,
		StopTimeout:  15 * time.Second,
		CallTimeout:  2 * time.Minute,
	})
	if err != nil {
		t.Fatalf("start %s: %v", m.name, err)
	}
	m.d = d
	m.lastMembers, m.lastSecret = members, secretFile
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", d.PID())); err != nil || exe != m.c.bin {
		t.Fatalf("%s: process %d runs %q, not the driver %s (%v)", m.name, d.PID(), exe, m.c.bin, err)
	}
	if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", d.PID())); err == nil {
		self, _ := os.Readlink("/proc/self/ns/net")
		if ns == self {
			t.Fatalf("%s runs in the test's own network namespace", m.name)
		}
	}
}

// stop stops m's driver with SIGTERM (SIGKILL after 15 s).
func (m *member) stop(t *testing.T) {
	t.Helper()
	if m.d == nil {
		return
	}
	err := m.d.Stop()
	m.d = nil
	if err != nil {
		t.Errorf("stop %s: %v", m.name, err)
	}
}

// kill kills m's driver with SIGKILL, as a crash or an OOM kill would.
func (m *member) kill(t *testing.T) {
	t.Helper()
	if m.d == nil {
		return
	}
	if err := syscall.Kill(m.d.PID(), syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (pid %d): %v", m.name, m.d.PID(), err)
	}
	select {
	case <-m.d.Exited():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s (pid %d) did not exit after SIGKILL", m.name, m.d.PID())
	}
	m.d.Stop() // closes the connection and removes the socket directory
	m.d = nil
}

// keepUp starts m again, with the flags it last ran with, if its driver
// is not running (an earlier failed step may have left it stopped).
func (m *member) keepUp(t *testing.T) {
	t.Helper()
	if m.running() {
		return
	}
	if m.d != nil {
		t.Logf("%s had exited; starting it again", m.name)
		m.d.Stop()
		m.d = nil
	} else {
		t.Logf("%s was stopped; starting it again", m.name)
	}
	m.start(t, m.lastMembers, m.lastSecret)
}

// restart stops m's driver and starts it with the member list members.
func (m *member) restart(t *testing.T, members string) {
	t.Helper()
	m.stop(t)
	m.start(t, members, m.c.secret)
}

// running reports whether m's driver runs.
func (m *member) running() bool { return m.d != nil && m.d.Running() }

// teardown stops every driver, unmounts everything below the run's
// directory, removes the links, the bridge and the namespaces, and removes
// the directory (keeping the member logs, printed, when the test failed).
func (c *cluster) teardown() {
	t := c.t
	for _, m := range c.hosts {
		if m.d != nil {
			if err := m.d.Stop(); err != nil && !strings.Contains(err.Error(), "signal: killed") {
				t.Logf("stop %s: %v", m.name, err)
			}
			m.d = nil
		}
	}
	if _, err := csiharness.UnmountUnder(c.dir); err != nil {
		t.Errorf("unmount below %s: %v", c.dir, err)
	}
	for _, m := range c.hosts {
		if linkExists(m.veth) {
			if _, err := command("ip", "link", "del", m.veth); err != nil {
				t.Errorf("teardown: %v", err)
			}
		}
		if _, err := os.Stat("/run/netns/" + m.ns); err == nil {
			if _, err := command("ip", "netns", "del", m.ns); err != nil {
				t.Errorf("teardown: %v", err)
			}
		}
	}
	if c.bridge != "" && linkExists(c.bridge) {
		if _, err := command("ip", "link", "del", c.bridge); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	if left, _ := csiharness.MountsUnder(c.dir); len(left) > 0 {
		t.Errorf("mounts left below %s, not removing it: %v", c.dir, left)
		return
	}
	if !t.Failed() {
		os.RemoveAll(c.dir)
		return
	}
	c.printLogs()
	ents, _ := os.ReadDir(c.dir)
	for _, e := range ents {
		if e.Name() != "logs" {
			os.RemoveAll(filepath.Join(c.dir, e.Name()))
		}
	}
	t.Logf("member logs kept in %s", filepath.Join(c.dir, "logs"))
}

func linkExists(name string) bool {
	_, err := command("ip", "link", "show", "dev", name)
	return err == nil
}

// klogProblem matches klog's error and warning lines.
var klogProblem = regexp.MustCompile(`^[EW]\d{4} `)

// printLogs prints, for every member, its error and warning lines and the
// end of its log.
func (c *cluster) printLogs() {
	for _, m := range c.hosts {
		b, err := os.ReadFile(m.logPath)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		var problems []string
		for _, l := range lines {
			if klogProblem.MatchString(l) || strings.HasPrefix(l, "=====") || strings.HasPrefix(l, "panic") {
				problems = append(problems, l)
			}
		}
		c.t.Logf("----- %s (%s): errors, warnings and restarts (last 40 of %d) -----\n%s", m.name, m.logPath,
			len(problems), strings.Join(lastN(problems, 40), "\n"))
		c.t.Logf("----- %s: last 40 log lines -----\n%s", m.name, strings.Join(lastN(lines, 40), "\n"))
	}
}

func lastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// createVolume creates volume name through m's controller service.
func (m *member) createVolume(t *testing.T, name string, quota int64) *csi.Volume {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := m.d.CreateVolume(ctx, name, quota)
	if err != nil {
		t.Fatalf("%s: %v", m.name, err)
	}
	return v
}

// pod is a build pod's mount of a volume on a host.
type pod struct {
	m      *member
	vol    *csi.Volume
	target string
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
	staging, ok := m.staged[vol.GetVolumeId()]
	if !ok {
		staging = filepath.Join(m.c.dir, m.short, "kubelet", "staging", fmt.Sprint(len(m.staged)))
		if err := m.d.Stage(ctx, vol, staging, flags...); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		m.staged[vol.GetVolumeId()] = staging
	}
	m.pods++
	target := filepath.Join(m.c.dir, m.short, "kubelet", "pods", fmt.Sprintf("pod-%d", m.pods), "volume")
	if err := m.d.Publish(ctx, vol, staging, target, flags, false); err != nil {
		t.Fatalf("%s: %v", m.name, err)
	}
	return &pod{m: m, vol: vol, target: target}
}

// unmount ends the pod: NodeUnpublishVolume on its node's current driver
// process, which moves the pod's writes into the outbox.
func (p *pod) unmount(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.m.d.Unpublish(ctx, p.vol, p.target); err != nil {
		t.Fatalf("%s: %v", p.m.name, err)
	}
}

// waitCommitted waits until m's outbox is empty: every ended pod's writes
// are committed (or refused).
func (m *member) waitCommitted(t *testing.T, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := m.d.WaitCommitted(ctx); err != nil {
		t.Fatalf("%s: commit: %v", m.name, err)
	}
	return time.Since(start)
}

// metricsText fetches m's /metrics.
func (m *member) metricsText() (string, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + m.metrics + "/metrics")
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", m.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", m.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s metrics: %s", m.name, resp.Status)
	}
	return string(b), nil
}

// metric returns the sum of m's series of metric name whose labels include
// every "key=value" of labels (0 when there is none).
func (m *member) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	text, err := m.metricsText()
	if err != nil {
		t.Fatal(err)
	}
	return parseMetric(text, name, labels)
}

// parseMetric sums the samples of metric name in the Prometheus text format
// whose labels include every "key=value" of labels.
func parseMetric(text, name string, labels []string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var lbls []string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.Index(rest, "}")
			if end < 0 {
				continue
			}
			lbls = strings.Split(rest[1:end], ",")
			rest = rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another metric with this prefix
		}
		match := true
		for _, want := range labels {
			k, v, _ := strings.Cut(want, "=")
			match = match && slices.Contains(lbls, k+`="`+v+`"`)
		}
		fields := strings.Fields(rest)
		if !match || len(fields) == 0 {
			continue
		}
		if f, err := strconv.ParseFloat(fields[0], 64); err == nil {
			sum += f
		}
	}
	return sum
}

// poll calls cond every interval until it reports done or timeout passes;
// it returns cond's last message when it times out.
func poll(timeout, interval time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(timeout)
	for {
		done, msg := cond()
		if done {
			return true, msg
		}
		if time.Now().After(deadline) {
			return false, msg
		}
		time.Sleep(interval)
	}
}

// waitLive waits until every one of ms sees n live members (itself
// included).
func waitLive(t *testing.T, n int, ms ...*member) {
	t.Helper()
	ok, msg := poll(30*time.Second, 200*time.Millisecond, func() (bool, string) {
		var seen []string
		done := true
		for _, m := range ms {
			text, err := m.metricsText()
			if err != nil {
				return false, err.Error()
			}
			live := parseMetric(text, "cachegroup_members_live", nil)
			seen = append(seen, fmt.Sprintf("%s sees %v", m.name, live))
			done = done && int(live) == n
		}
		return done, strings.Join(seen, ", ")
	})
	if !ok {
		t.Fatalf("members did not all see %d live members within 30s: %s", n, msg)
	}
}

// blobPath is where m's store keeps blob sum.
func (m *member) blobPath(sum string) string {
	return filepath.Join(m.store, "blobs", sum[:2], sum)
}

// hasBlob reports whether m's store holds blob sum.
func (m *member) hasBlob(sum string) bool {
	_, err := os.Lstat(m.blobPath(sum))
	return err == nil
}

// blobs returns the blobs in m's store with their link counts (more than
// one: a snapshot on the node links the blob).
func (m *member) blobs() (map[string]uint64, error) {
	out := map[string]uint64{}
	err := filepath.WalkDir(filepath.Join(m.store, "blobs"), func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !e.Type().IsRegular() || len(e.Name()) != 64 {
			return nil
		}
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil {
			out[e.Name()] = uint64(st.Nlink)
		}
		return nil
	})
	return out, err
}

// owners returns the members of group that own blob sum, in rendezvous
// order: the product's placement (cachegroup.Score), R of them.
func owners(sum string, group []string) []string {
	ns := slices.Clone(group)
	key := "blob/" + sum
	sort.Slice(ns, func(i, j int) bool { return cachegroup.Score(key, ns[i], 1) > cachegroup.Score(key, ns[j], 1) })
	return ns[:min(replicas, len(ns))]
}

// byName returns the member called name among ms.
func byName(name string, ms ...*member) *member {
	for _, m := range ms {
		if m.name == name {
			return m
		}
	}
	return nil
}

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
