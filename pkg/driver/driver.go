// Package driver implements the cachegroup CSI driver: the Identity,
// Controller and Node services over a cache group, and the parsing of mount
// options.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/mounter"
)

// DefaultName is the driver's CSI name.
const DefaultName = "cachegroup.csi.dev"

// Version is the driver's version, set at build time.
var Version = "dev"

// Mode says which CSI services a driver process serves.
type Mode string

// The modes of the driver binary.
const (
	ModeNode       Mode = "node"
	ModeController Mode = "controller"
	ModeAll        Mode = "all"
)

// Config configures a driver.
type Config struct {
	Name string // CSI driver name; DefaultName if empty
	Mode Mode
	// DefaultQuota is the quota of an inline volume that names no size.
	DefaultQuota int64
	// Member is the cache group member the driver maps CSI calls onto. The
	// controller is always a client of the group, without a node tier.
	Member cachegroup.Config
	// Mounter makes the pods' mounts; mounter.System if nil.
	Mounter mounter.Mounter
}

// Driver is a running CSI driver.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg    Config
	member *cachegroup.Member
	group  *group.Group
	node   *node.Node // nil in controller mode
	mount  mounter.Mounter

	inflight inflight // volumes (and snapshots) with a call in progress
	targets  inflight // target paths with a publish or unpublish in progress
	srv      *grpc.Server
	cancel   context.CancelFunc
	done     sync.WaitGroup
}

// New opens the cache group member and returns a driver ready to Serve.
func New(cfg Config) (*Driver, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAll
	}
	if cfg.Member.Group == "" {
		cfg.Member.Group = "default"
	}
	if cfg.DefaultQuota == 0 {
		cfg.DefaultQuota = 10 << 30
	}
	if cfg.Mounter == nil {
		cfg.Mounter = mounter.System{}
	}
	switch cfg.Mode {
	case ModeNode, ModeController, ModeAll:
	default:
		return nil, fmt.Errorf("mode %q: want node, controller or all", cfg.Mode)
	}
	if err := validGroupName(cfg.Member.Group); err != nil {
		return nil, fmt.Errorf("group %q: %w", cfg.Member.Group, err)
	}
	if cfg.Mode == ModeController {
		cfg.Member.ClientOnly, cfg.Member.NoNodeTier = true, true
	}
	m, err := cachegroup.Open(cfg.Member)
	if err != nil {
		return nil, err
	}
	d := &Driver{cfg: cfg, member: m, group: m.Group(), node: m.Node(), mount: cfg.Mounter}
	if d.node != nil {
		if ev := newEvents(cfg.Member.NodeID, d.group); ev != nil {
			ev.watch(d.node)
		}
	}
	return d, nil
}

// Serve serves the driver's CSI services on l until Stop, and runs the
// member (peer protocol, membership, re-replication, committer, metrics).
func (d *Driver) Serve(l net.Listener) error {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.done.Add(1)
	go func() {
		defer d.done.Done()
		d.member.Run(ctx)
	}()
	d.srv = grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(d.srv, d)
	if d.cfg.Mode != ModeNode {
		csi.RegisterControllerServer(d.srv, d)
	}
	if d.cfg.Mode != ModeController {
		csi.RegisterNodeServer(d.srv, d)
	}
	klog.InfoS("Serving", "driver", d.cfg.Name, "version", Version, "mode", d.cfg.Mode, "node", d.cfg.Member.NodeID,
		"group", d.cfg.Member.Group, "store", d.cfg.Member.Dir, "address", l.Addr())
	return d.srv.Serve(l)
}

// Stop stops serving and the member's background work. Mounted pods are not
// touched: their reads never go through this process.
func (d *Driver) Stop() {
	if d.srv != nil {
		d.srv.GracefulStop()
	}
	if d.cancel != nil {
		d.cancel()
	}
	d.done.Wait()
	d.member.Close()
}

// WaitIdle waits until every pod write submitted so far is committed.
func (d *Driver) WaitIdle(ctx context.Context) error {
	if d.node == nil {
		return nil
	}
	return d.node.WaitIdle(ctx)
}

// Node returns the driver's node tier, or nil in controller mode.
func (d *Driver) Node() *node.Node { return d.node }

// Group returns the driver's cache group.
func (d *Driver) Group() *group.Group { return d.group }

// Listen opens the endpoint of a CSI address such as unix:///csi/csi.sock,
// removing a stale socket file first.
func Listen(endpoint string) (net.Listener, error) {
	scheme, addr, ok := strings.Cut(endpoint, "://")
	if !ok {
		scheme, addr = "unix", endpoint
	}
	switch scheme {
	case "unix":
		if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket %s: %w", addr, err)
		}
		if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
			return nil, err
		}
	case "tcp":
	default:
		return nil, fmt.Errorf("endpoint %q: want unix:// or tcp://", endpoint)
	}
	return net.Listen(scheme, addr)
}

// inflight is the set of volumes with a call in progress; a second call on
// the same volume gets Aborted so the CO retries it later.
type inflight struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (f *inflight) lock(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ids[id] {
		return status.Errorf(codes.Aborted, "an operation on %s is already in progress", id)
	}
	if f.ids == nil {
		f.ids = map[string]bool{}
	}
	f.ids[id] = true
	return nil
}

func (f *inflight) unlock(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ids, id)
}

// errStatus turns a cache group error into a gRPC status.
func errStatus(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	// A full store first: a fetch that found no room here also hears "not
	// found" from the sources it tried after, and the volume is not gone.
	case errors.Is(err, cachegroup.ErrTooLarge), errors.Is(err, cachegroup.ErrNoSpace):
		code = codes.ResourceExhausted
	case errors.Is(err, cachegroup.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, cachegroup.ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, cachegroup.ErrInvalidID):
		code = codes.InvalidArgument
	case errors.Is(err, cachegroup.ErrUnavailable):
		code = codes.Unavailable // the kubelet and provisioner retry
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Errorf(code, "%s: %v", fmt.Sprintf(format, args...), err)
}
