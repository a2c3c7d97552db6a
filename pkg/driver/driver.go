// Package driver implements the cachegroup CSI driver: the Identity,
// Controller and Node services over a cache group, and the parsing of mount
// options.
package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
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
	Name      string // CSI driver name; DefaultName if empty
	NodeID    string // this node's name: the member's identity
	StoreDir  string // where the member keeps everything
	Group     string // this member's group
	Mode      Mode
	CacheSize int64 // bytes of blobs kept at most; 0: no limit but the floor
	FreeFloor int64 // free bytes always left on the store's disk
	// Members is the static member list, "name=host:port" each. With no
	// member source at all the group is this member alone.
	Members []string
	// MembersDNS is a DNS name (a headless Service) whose addresses are the
	// members, at the port of PeerAddress.
	MembersDNS string
	// MembersService is "namespace/name" of a headless Service whose ready
	// EndpointSlice endpoints are the members.
	MembersService string
	// PeerAddress is where this member serves its peers (host:port).
	PeerAddress string
	// PeerSecretFile holds the group's shared secret; PeerCert, PeerKey and
	// PeerCA enable mutual TLS between members.
	PeerSecretFile, PeerCert, PeerKey, PeerCA string
	// Replicas is R, the copies of each blob and head (default 2).
	Replicas int
	// Weight is this member's share of placement (its capacity).
	Weight float64
	// ClientOnly mounts volumes for pods on this node without being a
	// member: it owns nothing and is never a home. The controller always is.
	ClientOnly bool
	// MetricsAddress serves Prometheus metrics at /metrics if set.
	MetricsAddress string
	// DefaultQuota is the quota of an inline volume that names no size.
	DefaultQuota int64
}

// Driver is a running CSI driver.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg   Config
	store *cachegroup.Store
	local *cachegroup.Local
	group *cachegroup.Group
	node  *cachegroup.Node

	auth    *cachegroup.Auth
	members *cachegroup.Membership
	source  sourceFunc

	inflight inflight
	srv      *grpc.Server
	cancel   context.CancelFunc
	done     sync.WaitGroup
}

// New opens the member's store and group and returns a driver ready to Serve.
func New(cfg Config) (*Driver, error) {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAll
	}
	if cfg.Group == "" {
		cfg.Group = "default"
	}
	if cfg.DefaultQuota == 0 {
		cfg.DefaultQuota = 10 << 30
	}
	switch cfg.Mode {
	case ModeNode, ModeController, ModeAll:
	default:
		return nil, fmt.Errorf("mode %q: want node, controller or all", cfg.Mode)
	}
	if cfg.NodeID == "" {
		return nil, errors.New("node id is empty")
	}
	if err := validGroupName(cfg.Group); err != nil {
		return nil, fmt.Errorf("group %q: %w", cfg.Group, err)
	}
	if cfg.StoreDir == "" {
		return nil, errors.New("store directory is empty")
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 2
	}
	if cfg.Weight == 0 {
		cfg.Weight = 1
	}
	src, err := memberSource(cfg)
	if err != nil {
		return nil, err
	}
	store, err := cachegroup.OpenStore(cfg.StoreDir, cachegroup.Limits{CacheSize: cfg.CacheSize, FreeFloor: cfg.FreeFloor})
	if err != nil {
		return nil, err
	}
	local, err := cachegroup.OpenLocal(cfg.NodeID, store, filepath.Join(cfg.StoreDir, "meta"))
	if err != nil {
		return nil, err
	}
	clientOnly := cfg.ClientOnly || cfg.Mode == ModeController
	d := &Driver{cfg: cfg, store: store, local: local,
		group: cachegroup.NewGroup(cfg.Group, local, cfg.Replicas, nil, clientOnly)}
	d.group.SetWeight(cfg.Weight)
	if src != nil {
		if d.auth, err = cachegroup.NewAuth(cfg.PeerSecretFile, cfg.PeerCert, cfg.PeerKey, cfg.PeerCA); err != nil {
			return nil, err
		}
		d.source = src
	} else if clientOnly && cfg.Mode != ModeController {
		return nil, errors.New("a client-only node needs a member source (--members, --members-dns or --members-service)")
	}
	if cfg.Mode != ModeController {
		if d.node, err = cachegroup.OpenNode(filepath.Join(cfg.StoreDir, "node"), d.group); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// Serve serves the driver's CSI services on l until Stop, and the peer
// protocol, membership, re-replication and metrics when configured.
func (d *Driver) Serve(l net.Listener) error {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	if err := d.startGroup(ctx); err != nil {
		cancel()
		return err
	}
	if d.node != nil {
		d.done.Add(1)
		go func() {
			defer d.done.Done()
			d.node.Run(ctx)
		}()
	}
	d.srv = grpc.NewServer(grpc.UnaryInterceptor(logCalls))
	csi.RegisterIdentityServer(d.srv, d)
	if d.cfg.Mode != ModeNode {
		csi.RegisterControllerServer(d.srv, d)
	}
	if d.cfg.Mode != ModeController {
		csi.RegisterNodeServer(d.srv, d)
	}
	klog.InfoS("Serving", "driver", d.cfg.Name, "version", Version, "mode", d.cfg.Mode, "node", d.cfg.NodeID,
		"group", d.cfg.Group, "store", d.cfg.StoreDir, "address", l.Addr())
	return d.srv.Serve(l)
}

// Stop stops serving and the background committer. Mounted pods are not
// touched: their reads never go through this process.
func (d *Driver) Stop() {
	if d.srv != nil {
		d.srv.GracefulStop()
	}
	if d.cancel != nil {
		d.cancel()
	}
	d.done.Wait()
}

// WaitIdle waits until every pod write submitted so far is committed.
func (d *Driver) WaitIdle(ctx context.Context) error {
	if d.node == nil {
		return nil
	}
	return d.node.WaitIdle(ctx)
}

// Node returns the driver's node tier, or nil in controller mode.
func (d *Driver) Node() *cachegroup.Node { return d.node }

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
	case errors.Is(err, cachegroup.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, cachegroup.ErrExists):
		code = codes.AlreadyExists
	case errors.Is(err, cachegroup.ErrTooLarge), errors.Is(err, cachegroup.ErrNoSpace):
		code = codes.ResourceExhausted
	case errors.Is(err, cachegroup.ErrUnavailable):
		code = codes.Unavailable // the kubelet and provisioner retry
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	}
	return status.Errorf(code, "%s: %v", fmt.Sprintf(format, args...), err)
}

// membershipInterval is how often members are listed and health-checked.
const membershipInterval = 2 * time.Second

// reconcileInterval is how often heads are exchanged between homes (blobs are
// checked on membership changes and every few minutes, see RunReconciler).
const reconcileInterval = 30 * time.Second

// memberSource returns the configured source of members, or nil for a group
// of one.
func memberSource(cfg Config) (sourceFunc, error) {
	n := 0
	for _, s := range []string{strings.Join(cfg.Members, ","), cfg.MembersDNS, cfg.MembersService} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("give one member source: --members, --members-dns or --members-service")
	}
	_, port, _ := net.SplitHostPort(cfg.PeerAddress)
	switch {
	case len(cfg.Members) > 0:
		st, err := cachegroup.ParseStatic(cfg.Members)
		if err != nil {
			return nil, err
		}
		if len(st) == 1 && st[0].Name == cfg.NodeID {
			return nil, nil // a group of one
		}
		return func(context.Context) (cachegroup.Source, error) { return st, nil }, nil
	case cfg.MembersDNS != "":
		if port == "" {
			return nil, errors.New("--members-dns needs --peer-address with a port")
		}
		return func(context.Context) (cachegroup.Source, error) {
			return cachegroup.DNS{Name: cfg.MembersDNS, Port: port}, nil
		}, nil
	case cfg.MembersService != "":
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, errors.New("--members-service needs --peer-address with a port")
		}
		return func(ctx context.Context) (cachegroup.Source, error) {
			return cachegroup.NewEndpointSlices(ctx, cfg.MembersService, p)
		}, nil
	}
	return nil, nil
}

// sourceFunc opens a member source once the driver runs.
type sourceFunc func(context.Context) (cachegroup.Source, error)

// startGroup starts what a member of a larger group runs besides CSI.
func (d *Driver) startGroup(ctx context.Context) error {
	if d.cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", d.cfg.MetricsAddress)
		if err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", d.group.Metrics().Handler())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ml)
		go func() {
			<-ctx.Done()
			srv.Close()
		}()
	}
	if d.source == nil {
		return nil
	}
	src, err := d.source(ctx)
	if err != nil {
		return err
	}
	d.members = cachegroup.NewMembership(d.group, src, d.auth, membershipInterval)
	if d.cfg.PeerAddress != "" && !d.group.ClientOnly() {
		pl, err := net.Listen("tcp", d.cfg.PeerAddress)
		if err != nil {
			return fmt.Errorf("peer address: %w", err)
		}
		srv := cachegroup.NewServer(d.group, d.auth)
		if d.node != nil {
			srv.Offer, srv.Through = d.node.Offer, d.node.Through
		}
		d.done.Add(1)
		go func() {
			defer d.done.Done()
			if err := srv.ListenAndServe(ctx, pl); err != nil {
				klog.ErrorS(err, "Peer server")
			}
		}()
	}
	d.members.Refresh(ctx)
	d.done.Add(1)
	go func() {
		defer d.done.Done()
		d.members.Run(ctx)
	}()
	if !d.group.ClientOnly() {
		d.done.Add(1)
		go func() {
			defer d.done.Done()
			var pinned func(cachegroup.Digest) bool
			if d.node != nil {
				pinned = d.node.Pinned
			}
			d.group.RunReconciler(ctx, reconcileInterval, pinned)
		}()
	}
	return nil
}

// Group returns the driver's cache group.
func (d *Driver) Group() *cachegroup.Group { return d.group }
