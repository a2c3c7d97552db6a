package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/cachegroup/cachegroup/internal/csiharness"
)

// Member is one host of the cluster and the driver process serving it.
type Member struct {
	c *Cluster
	// Short is the host's short name ("a"); Name its identity (--node-id,
	// "node-a").
	Short, Name string
	// NS is its network namespace; Veth the root-namespace end of its veth
	// pair; IP its address.
	NS, Veth, IP string
	// PeerAddr is HOST:PORT of the peer protocol, MetricsAddr of /metrics.
	PeerAddr, MetricsAddr string
	// Store is its store directory, Kubelet where its staging paths and pod
	// mounts go, LogPath its log (appended across starts), Wrapper the
	// script that runs the driver binary inside NS.
	Store, Kubelet, LogPath, Wrapper string
	// LogLevel is the -v it starts with.
	LogLevel int

	// D is its running driver, nil while stopped.
	D *csiharness.Driver
	// Staged maps volume id to the staging path the volume is staged at.
	Staged map[string]string
	// Pods counts the pods mounted on the host so far.
	Pods int
	// LastMembers, LastSecret and LastExtra are the member list, secret
	// file and extra flags it last started with.
	LastMembers, LastSecret string
	LastExtra               []string

	startTO, callTO, stopTimeout time.Duration
	replicas                     int
}

// MembersFlag is the --members value listing ms.
func MembersFlag(ms ...*Member) string {
	var items []string
	for _, m := range ms {
		items = append(items, m.Name+"="+m.PeerAddr)
	}
	return strings.Join(items, ",")
}

// Names returns the identities of ms.
func Names(ms ...*Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

// Start runs m's driver in its namespace with the static member list
// members (none if empty: extra then names the source), the shared secret in
// secretFile and extra flags (such as --client-only or --weight=W), and waits
// until it answers CSI calls.
func (m *Member) Start(ctx context.Context, members, secretFile string, extra ...string) error {
	if m.D != nil {
		return fmt.Errorf("%s is already running", m.Name)
	}
	var args []string
	if members != "" { // else extra names the member source
		args = append(args, "--members="+members)
	}
	args = append(args,
		"--peer-address="+m.PeerAddr,
		"--peer-secret-file="+secretFile,
		"--replicas="+strconv.Itoa(m.replicas),
		"--metrics-address="+m.MetricsAddr,
		fmt.Sprintf("-v=%d", m.LogLevel),
		// Garbage goes within a test's wait: a copy left at a member that
		// no longer owns it may be garbage, which the collector, not the
		// reconciler, removes. (A later --garbage-grace-period in extra wins.)
		"--garbage-grace-period=10s",
	)
	args = append(args, extra...)
	if f, err := os.OpenFile(m.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		fmt.Fprintf(f, "===== cluster: %s start %s in %s: %s\n", time.Now().Format(time.RFC3339Nano), m.Name, m.NS, strings.Join(args, " "))
		f.Close()
	}
	ctx, cancel := context.WithTimeout(ctx, m.startTO+15*time.Second)
	defer cancel()
	d, err := csiharness.Start(ctx, csiharness.Config{
		Binary:       m.Wrapper,
		StoreDir:     m.Store,
		NodeID:       m.Name,
		Mode:         "all",
		Args:         args,
		LogPath:      m.LogPath,
		StartTimeout: m.startTO,
		StopTimeout:  m.stopTimeout,
		CallTimeout:  m.callTO,
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", m.Name, err)
	}
	m.D = d
	m.LastMembers, m.LastSecret, m.LastExtra = members, secretFile, append([]string(nil), extra...)
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", d.PID())); err != nil || exe != m.c.Bin {
		return fmt.Errorf("%s: process %d runs %q, not the driver %s (%v)", m.Name, d.PID(), exe, m.c.Bin, err)
	}
	if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", d.PID())); err == nil {
		self, _ := os.Readlink("/proc/self/ns/net")
		if ns == self {
			return fmt.Errorf("%s runs in the caller's own network namespace", m.Name)
		}
	}
	return nil
}

// Stop stops m's driver with SIGTERM (SIGKILL after 15 s).
func (m *Member) Stop() error {
	if m.D == nil {
		return nil
	}
	err := m.D.Stop()
	m.D = nil
	if err != nil {
		return fmt.Errorf("stop %s: %w", m.Name, err)
	}
	return nil
}

// Kill kills m's driver with SIGKILL, as a crash or an OOM kill would.
func (m *Member) Kill() error {
	if m.D == nil {
		return nil
	}
	if err := syscall.Kill(m.D.PID(), syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s (pid %d): %w", m.Name, m.D.PID(), err)
	}
	select {
	case <-m.D.Exited():
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", m.Name, m.D.PID())
	}
	m.D.Stop() // closes the connection and removes the socket directory
	m.D = nil
	return nil
}

// Restart stops m's driver and starts it with the member list members and
// the secret and extra flags it last ran with.
func (m *Member) Restart(ctx context.Context, members string) error {
	if err := m.Stop(); err != nil {
		return err
	}
	return m.Start(ctx, members, m.c.Secret, m.LastExtra...)
}

// KeepUp starts m again, with the flags it last ran with, if its driver is
// not running, and reports whether it did.
func (m *Member) KeepUp(ctx context.Context) (bool, error) {
	if m.Running() {
		return false, nil
	}
	if m.D != nil {
		m.D.Stop()
		m.D = nil
	}
	return true, m.Start(ctx, m.LastMembers, m.LastSecret, m.LastExtra...)
}

// Running reports whether m's driver runs.
func (m *Member) Running() bool { return m.D != nil && m.D.Running() }

// ResetStore empties m's store and kubelet directories, as on a fresh
// host. m must be stopped, with nothing mounted below them.
func (m *Member) ResetStore() error {
	if m.D != nil {
		return fmt.Errorf("%s is running: stop it before emptying its store", m.Name)
	}
	for _, d := range []string{m.Store, m.Kubelet} {
		if left, err := csiharness.UnmountUnder(d); err != nil {
			return err
		} else if len(left) > 0 {
			return fmt.Errorf("%s: mounts were left below %s: %v", m.Name, d, left)
		}
		if err := os.RemoveAll(d); err != nil {
			return err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	m.Staged = map[string]string{}
	return nil
}

// Exec returns a command that runs name with args in m's network
// namespace (and in the caller's mount namespace).
func (m *Member) Exec(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + m.NS, "--", name}, args...)...)
}

// CreateVolume creates volume name through m's controller service.
func (m *Member) CreateVolume(ctx context.Context, name string, quota int64) (*csi.Volume, error) {
	v, err := m.D.CreateVolume(ctx, name, quota)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name, err)
	}
	return v, nil
}

// StagingPath returns where vol is (or would next be) staged on m.
func (m *Member) StagingPath(vol *csi.Volume) string {
	if p, ok := m.Staged[vol.GetVolumeId()]; ok {
		return p
	}
	return filepath.Join(m.Kubelet, "staging", fmt.Sprint(len(m.Staged)))
}

// Stage stages vol on m with flags unless it is staged there already.
func (m *Member) Stage(ctx context.Context, vol *csi.Volume, flags ...string) error {
	if _, ok := m.Staged[vol.GetVolumeId()]; ok {
		return nil
	}
	staging := m.StagingPath(vol)
	if err := m.D.Stage(ctx, vol, staging, flags...); err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	m.Staged[vol.GetVolumeId()] = staging
	return nil
}

// Unstage unstages vol on m if it is staged there.
func (m *Member) Unstage(ctx context.Context, vol *csi.Volume) error {
	staging, ok := m.Staged[vol.GetVolumeId()]
	if !ok {
		return nil
	}
	if err := m.D.Unstage(ctx, vol, staging); err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	delete(m.Staged, vol.GetVolumeId())
	return nil
}

// Pod is a build pod's mount of a volume on a host.
type Pod struct {
	// M is the host.
	M *Member
	// Vol is the volume.
	Vol *csi.Volume
	// Target is the pod's mount.
	Target string
	// Flags are the mount flags it was published with.
	Flags []string
}

// Mount does what the kubelet does for a pod on m using vol: stage the
// volume on the node (once per node), then publish it at a fresh target,
// both with flags.
func (m *Member) Mount(ctx context.Context, vol *csi.Volume, flags ...string) (*Pod, error) {
	if err := m.Stage(ctx, vol, flags...); err != nil {
		return nil, err
	}
	m.Pods++
	target := filepath.Join(m.Kubelet, "pods", fmt.Sprintf("pod-%d", m.Pods), "volume")
	if err := m.D.Publish(ctx, vol, m.Staged[vol.GetVolumeId()], target, flags, false); err != nil {
		return nil, fmt.Errorf("%s: %w", m.Name, err)
	}
	return &Pod{M: m, Vol: vol, Target: target, Flags: flags}, nil
}

// Unmount ends the pod: NodeUnpublishVolume on its node's current driver
// process, which moves the pod's writes into the outbox.
func (p *Pod) Unmount(ctx context.Context) error {
	if p.M.D == nil {
		return fmt.Errorf("%s is stopped", p.M.Name)
	}
	if err := p.M.D.Unpublish(ctx, p.Vol, p.Target); err != nil {
		return fmt.Errorf("%s: %w", p.M.Name, err)
	}
	return nil
}

// WaitCommitted waits until m's outbox is empty (every ended pod's writes
// committed or refused) and returns how long that took.
func (m *Member) WaitCommitted(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	if m.D == nil {
		return 0, fmt.Errorf("%s is stopped", m.Name)
	}
	if err := m.D.WaitCommitted(ctx); err != nil {
		return time.Since(start), fmt.Errorf("%s: commit: %w", m.Name, err)
	}
	return time.Since(start), nil
}

// CPUTime returns the user and system CPU time m's driver has used so far.
func (m *Member) CPUTime() (time.Duration, error) {
	if m.D == nil {
		return 0, errors.New(m.Name + " is stopped")
	}
	return ProcessCPU(m.D.PID())
}

// ProcessCPU returns the user plus system CPU time process pid has used,
// from /proc/PID/stat.
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: count from after it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(s[i+1:])
	// Fields after the name: state(0) ... utime(11) stime(12).
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(ut+st) * (time.Second / 100), nil
}
