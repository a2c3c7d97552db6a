// Package cluster runs a cache group of several members on one machine: each
// member is a separate process of the real driver binary in a network
// namespace of its own, linked to a bridge in the root namespace by a veth
// pair, with its own store, driven through CSI calls on its socket with real
// mounts. The end-to-end test and the group benchmark use it. It needs root
// and the ip and nsenter commands.
//
// Everything a Cluster creates lives below its directory or carries the
// creating process's PID in its name (namespaces cgtest-PID-X, links
// cgbrPID and cgvPIDX), and is removed by Close; what a process that died
// without cleaning up left behind is removed by CleanStale.
package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cachegroup/cachegroup/internal/csiharness"
)

// The ports every member listens on, each on its own address.
const (
	// PeerPort is the port of the peer protocol.
	PeerPort = 7600
	// MetricsPort is the port of /metrics.
	MetricsPort = 9808
	// DefaultReplicas is R, the copies of every blob the group keeps,
	// unless Config says otherwise.
	DefaultReplicas = 2
)

// Config says how to set up a cluster.
type Config struct {
	// Binary is the driver binary every member runs (required).
	Binary string
	// Parent is where the run's directory is made; default os.TempDir().
	Parent string
	// Prefix starts the run directory's name, followed by the PID;
	// default "cge2e". CleanStale looks for directories with it.
	Prefix string
	// LogLevel is the members' klog verbosity (-v); default 2.
	LogLevel int
	// Replicas is R (--replicas); default DefaultReplicas.
	Replicas int
	// StartTimeout bounds a member's start until it answers CSI calls;
	// default 30s.
	StartTimeout time.Duration
	// CallTimeout bounds each attempt of a node call (see csiharness);
	// default 2 minutes.
	CallTimeout time.Duration
}

// Cluster is a set of hosts on one machine: a network namespace each, linked
// to a bridge in the root namespace by a veth pair, and on each a member (the
// driver binary) with its own store.
type Cluster struct {
	// Bin is the driver binary.
	Bin string
	// Dir holds everything of this run: stores, kubelet directories, logs.
	Dir string
	// Secret is the group's shared-secret file.
	Secret string
	// PID is the creating process's PID, part of every name.
	PID int
	// Bridge is the bridge in the root namespace.
	Bridge string
	// Subnet is the first three octets of the run's /24, "10.213.N"; the
	// bridge has .254.
	Subnet string
	// Hosts are the hosts added so far, in order.
	Hosts []*Member

	cfg Config
}

// Prerequisites reports why a cluster cannot be set up here: not root, or
// the ip or nsenter command missing. Nil means it can.
func Prerequisites() error {
	if os.Geteuid() != 0 {
		return errors.New("a cache group on one machine needs network namespaces and overlay mounts: run as root")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("the %s command is missing: it is needed to put each member in its own network namespace", tool)
		}
	}
	return nil
}

// Command runs name with args (bounded by 30 seconds) and returns its
// combined output; the error names the command and carries the output.
func Command(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// New cleans up what dead earlier runs left, creates the run's directory,
// the group's secret and the bridge. On error nothing it created is left;
// otherwise Close removes everything the cluster creates.
func New(cfg Config) (*Cluster, error) {
	if cfg.Binary == "" {
		return nil, errors.New("cluster: no driver binary given")
	}
	if err := Prerequisites(); err != nil {
		return nil, err
	}
	if cfg.Parent == "" {
		cfg.Parent = os.TempDir()
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "cge2e"
	}
	if cfg.LogLevel == 0 {
		cfg.LogLevel = 2
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = DefaultReplicas
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 2 * time.Minute
	}
	c := &Cluster{Bin: cfg.Binary, PID: os.Getpid(), cfg: cfg}
	CleanStale(cfg.Parent, cfg.Prefix)
	if err := os.MkdirAll(cfg.Parent, 0o755); err != nil {
		return nil, err
	}
	var err error
	if c.Dir, err = os.MkdirTemp(cfg.Parent, fmt.Sprintf("%s-%d-", cfg.Prefix, c.PID)); err != nil {
		return nil, err
	}
	fail := func(err error) (*Cluster, error) {
		c.Close(false)
		return nil, err
	}
	for _, sub := range []string{"bin", "logs"} {
		if err := os.MkdirAll(filepath.Join(c.Dir, sub), 0o755); err != nil {
			return fail(err)
		}
	}
	if c.Secret, err = c.WriteSecret("secret"); err != nil {
		return fail(err)
	}
	if c.Subnet, err = freeSubnet(c.PID); err != nil {
		return fail(err)
	}
	bridge := fmt.Sprintf("cgbr%d", c.PID)
	if LinkExists(bridge) { // left by an earlier process with this PID
		Command("ip", "link", "del", bridge)
	}
	c.Bridge = bridge // before creating it: Close removes it
	for _, args := range [][]string{
		{"link", "add", bridge, "type", "bridge"},
		{"addr", "add", c.Subnet + ".254/24", "dev", bridge},
		{"link", "set", bridge, "up"},
	} {
		if _, err := Command("ip", args...); err != nil {
			return fail(err)
		}
	}
	return c, nil
}

// Replicas returns R, the copies of every blob the members keep.
func (c *Cluster) Replicas() int { return c.cfg.Replicas }

// WriteSecret writes a fresh 32-byte random secret (hex) to a file below the
// run's directory and returns its path.
func (c *Cluster) WriteSecret(name string) (string, error) {
	b := make([]byte, 32)
	rand.Read(b)
	p := filepath.Join(c.Dir, name)
	if err := os.WriteFile(p, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		return "", err
	}
	return p, nil
}

// freeSubnet picks a /24 in 10.213.0.0/16 that no route of this machine
// covers yet, starting from one derived from pid.
func freeSubnet(pid int) (string, error) {
	out, err := Command("ip", "-4", "route", "show", "table", "all")
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

// CleanStale removes what an earlier run left behind when it could not clean
// up (a process killed by a timeout runs no cleanup): namespaces, links and
// run directories (below parent, named prefix-PID-...) of a PID that no
// longer runs. The drivers of such a run got SIGTERM when it died
// (Pdeathsig). Runs of live processes are left alone: several may run at
// once, each on its own subnet. A run directory keeps its logs.
func CleanStale(parent, prefix string) {
	if out, err := Command("ip", "netns", "list"); err == nil {
		re := regexp.MustCompile(`^cgtest-(\d+)-[a-z]+`)
		for _, line := range strings.Split(out, "\n") {
			if m := re.FindStringSubmatch(line); m != nil {
				if pid, _ := strconv.Atoi(m[1]); !alive(pid) {
					Command("ip", "netns", "del", m[0])
				}
			}
		}
	}
	if out, err := Command("ip", "-o", "link", "show"); err == nil {
		re := regexp.MustCompile(`^\d+: (cg(?:br|v)(\d+)[a-z]?)[@:]`)
		for _, line := range strings.Split(out, "\n") {
			if m := re.FindStringSubmatch(line); m != nil {
				if pid, _ := strconv.Atoi(m[2]); !alive(pid) {
					Command("ip", "link", "del", m[1])
				}
			}
		}
	}
	if parent == "" || prefix == "" {
		return
	}
	dirs, _ := filepath.Glob(filepath.Join(parent, prefix+"-*"))
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `-(\d+)-`)
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

// LinkExists reports whether network link name exists in the root
// namespace.
func LinkExists(name string) bool {
	_, err := Command("ip", "link", "show", "dev", name)
	return err == nil
}

// AddHost creates host short (a lowercase letter or a few): a network
// namespace with a veth pair to the bridge and the next address of the
// subnet, and the member's directories. The member is not started.
func (c *Cluster) AddHost(short string) (*Member, error) {
	m := &Member{
		c:           c,
		Short:       short,
		Name:        "node-" + short,
		NS:          fmt.Sprintf("cgtest-%d-%s", c.PID, short),
		Veth:        fmt.Sprintf("cgv%d%s", c.PID, short),
		IP:          fmt.Sprintf("%s.%d", c.Subnet, len(c.Hosts)+1),
		Store:       filepath.Join(c.Dir, short, "store"),
		Kubelet:     filepath.Join(c.Dir, short, "kubelet"),
		LogPath:     filepath.Join(c.Dir, "logs", short+".log"),
		Wrapper:     filepath.Join(c.Dir, "bin", "in-"+short),
		Staged:      map[string]string{},
		LogLevel:    c.cfg.LogLevel,
		startTO:     c.cfg.StartTimeout,
		callTO:      c.cfg.CallTimeout,
		replicas:    c.cfg.Replicas,
		stopTimeout: 15 * time.Second,
	}
	m.PeerAddr = fmt.Sprintf("%s:%d", m.IP, PeerPort)
	m.MetricsAddr = fmt.Sprintf("%s:%d", m.IP, MetricsPort)
	c.Hosts = append(c.Hosts, m) // before creating anything: Close removes it
	// Names carry this process's PID: one that exists is left by an earlier
	// process that had the same PID.
	if _, err := os.Stat("/run/netns/" + m.NS); err == nil {
		Command("ip", "netns", "del", m.NS)
	}
	if LinkExists(m.Veth) {
		Command("ip", "link", "del", m.Veth)
	}
	if _, err := Command("ip", "netns", "add", m.NS); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "add", m.Veth, "type", "veth", "peer", "name", "eth0", "netns", m.NS},
		{"link", "set", m.Veth, "master", c.Bridge, "up"},
		{"-n", m.NS, "addr", "add", m.IP + "/24", "dev", "eth0"},
		{"-n", m.NS, "link", "set", "eth0", "up"},
		{"-n", m.NS, "link", "set", "lo", "up"},
	} {
		if _, err := Command("ip", args...); err != nil {
			return nil, err
		}
	}
	if err := m.writeWrapper(""); err != nil {
		return nil, err
	}
	for _, d := range []string{m.Store, m.Kubelet} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// writeWrapper writes the script that runs the driver in m's network
// namespace. With a hosts file, the driver also gets a mount namespace of its
// own in which that file is /etc/hosts: the names it resolves are the test's
// (its mounts then stay inside, invisible to the caller).
func (m *Member) writeWrapper(hosts string) error {
	// nsenter, not `ip netns exec`: the latter unshares the mount namespace,
	// which would hide the driver's mounts from the caller (and the
	// kubelet). nsenter enters the network namespace and execs the driver,
	// so the PID the harness sees is the driver's.
	script := fmt.Sprintf("#!/bin/sh\nexec nsenter --net=/run/netns/%s -- %s \"$@\"\n", m.NS, m.c.Bin)
	if hosts != "" {
		// unshare without --fork execs: the PID stays the driver's.
		script = fmt.Sprintf("#!/bin/sh\nexec nsenter --net=/run/netns/%s -- unshare --mount --propagation slave -- "+
			"/bin/sh -c 'mount --bind \"$0\" /etc/hosts && exec \"$@\"' %s %s \"$@\"\n", m.NS, hosts, m.c.Bin)
	}
	return os.WriteFile(m.Wrapper, []byte(script), 0o755)
}

// UseHostsFile makes m's driver, from its next start, resolve names with
// hosts as its /etc/hosts. Rewrite the file in place to change what it
// resolves: the bind mount holds the file's inode.
func (m *Member) UseHostsFile(hosts string) error { return m.writeWrapper(hosts) }

// Close stops every driver, unmounts everything below the run's directory,
// removes the links, the bridge and the namespaces, and removes the
// directory; with keepLogs the member logs stay (in Dir/logs). It returns
// what it could not undo.
func (c *Cluster) Close(keepLogs bool) error {
	var errs []error
	for _, m := range c.Hosts {
		if m.D != nil {
			if err := m.D.Stop(); err != nil && !strings.Contains(err.Error(), "signal: killed") {
				errs = append(errs, fmt.Errorf("stop %s: %w", m.Name, err))
			}
			m.D = nil
		}
	}
	if c.Dir != "" {
		if _, err := csiharness.UnmountUnder(c.Dir); err != nil {
			errs = append(errs, fmt.Errorf("unmount below %s: %w", c.Dir, err))
		}
	}
	for _, m := range c.Hosts {
		if LinkExists(m.Veth) {
			if _, err := Command("ip", "link", "del", m.Veth); err != nil {
				errs = append(errs, err)
			}
		}
		if _, err := os.Stat("/run/netns/" + m.NS); err == nil {
			if _, err := Command("ip", "netns", "del", m.NS); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if c.Bridge != "" && LinkExists(c.Bridge) {
		if _, err := Command("ip", "link", "del", c.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Dir == "" {
		return errors.Join(errs...)
	}
	if left, _ := csiharness.MountsUnder(c.Dir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("mounts left below %s, not removing it: %v", c.Dir, left))
		return errors.Join(errs...)
	}
	if !keepLogs {
		if err := os.RemoveAll(c.Dir); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	ents, _ := os.ReadDir(c.Dir)
	for _, e := range ents {
		if e.Name() != "logs" {
			if err := os.RemoveAll(filepath.Join(c.Dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// klogProblem matches klog's error and warning lines.
var klogProblem = regexp.MustCompile(`^[EW]\d{4} `)

// LogSummary returns, for every member, its error and warning lines (and
// its starts) and the end of its log: at most n lines of each.
func (c *Cluster) LogSummary(n int) string {
	var sb strings.Builder
	for _, m := range c.Hosts {
		b, err := os.ReadFile(m.LogPath)
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
		fmt.Fprintf(&sb, "----- %s (%s): errors, warnings and restarts (last %d of %d) -----\n%s\n", m.Name, m.LogPath,
			min(n, len(problems)), len(problems), strings.Join(LastN(problems, n), "\n"))
		fmt.Fprintf(&sb, "----- %s: last %d log lines -----\n%s\n", m.Name, n, strings.Join(LastN(lines, n), "\n"))
	}
	return sb.String()
}

// LastN returns the last n elements of s (all of them if it has fewer).
func LastN(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
