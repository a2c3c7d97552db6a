package cachegroup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/metrics"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// Config is what a member is made of.
type Config struct {
	NodeID    string // this node's name: the member's identity
	Dir       string // where the member keeps everything (its cache disk)
	Group     string // the group's name
	CacheSize int64  // bytes of blobs kept at most; 0: no limit but the floor
	FreeFloor int64  // free bytes always left on the store's disk
	// Members is the static member list, "name=host:port" each. With no
	// member source at all the group is this member alone.
	Members []string
	// MembersDNS is a DNS name (a headless Service) whose addresses are the
	// members, at the port of PeerAddress.
	MembersDNS string
	// MembersService is "namespace/name" of a headless Service whose ready
	// EndpointSlice endpoints are the members.
	MembersService string
	// PeerAddress is where this member serves its peers (host:port); empty:
	// nowhere (a test serves PeerHandler itself).
	PeerAddress string
	// PeerSecretFile holds the group's shared secret (and, on a second
	// line, the previous one while members move to a new secret); PeerCert,
	// PeerKey and PeerCA enable mutual TLS between members, each
	// certificate named after its member. The files are re-read when they
	// change. Auth, if set, is used instead of them.
	PeerSecretFile, PeerCert, PeerKey, PeerCA string
	Auth                                      *wire.Auth
	// Replicas is R, the copies of each blob and head (default 2).
	Replicas int
	// Weight is this member's share of placement (its capacity).
	Weight float64
	// ClientOnly mounts volumes for pods on this node without being a
	// member: it owns nothing and is never a home.
	ClientOnly bool
	// NoNodeTier opens no node tier: the member mounts nothing (a controller).
	NoNodeTier bool
	// MetricsAddress serves Prometheus metrics at /metrics if set.
	MetricsAddress string
	// GarbageGrace is how long garbage is left before it is collected, and a
	// replaced head stays live (default 3 minutes; see group.CollectOptions).
	GarbageGrace time.Duration
	// MemberGrace is how long another member may be down and keep its place
	// in placement (no data moved to stand-ins and back while it restarts);
	// 0 takes DefaultMemberGrace, a negative value none at all.
	MemberGrace time.Duration
	// Version is the driver's version, exported as cachegroup_build_info.
	Version string
}

// DefaultMemberGrace is the grace period of a member that is down: longer
// than a node plugin's restart or a DaemonSet's rolling update of one pod.
const DefaultMemberGrace = 3 * time.Minute

// membershipInterval is how often members are listed and health-checked.
const membershipInterval = 2 * time.Second

// reconcileInterval is how often heads are exchanged between homes (blobs are
// checked on membership changes and every few minutes, see RunReconciler).
const reconcileInterval = 30 * time.Second

// Member is one member of a cache group on this node.
type Member struct {
	cfg     Config
	store   *cas.Store
	home    *volume.Home
	group   *group.Group
	node    *node.Node // nil without a node tier
	metrics *metrics.Set
	auth    *wire.Auth
	members *group.Membership // nil: a group of one
	admin   *admin            // what it answers an operator's tool

	peerL, metricsL net.Listener  // nil where not served
	window          time.Duration // of collections under pressure; 0: the default (tests set it)

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	runs   sync.WaitGroup
}

// Open opens the member's store, home, group and node tier, starts listening
// for its peers and its metrics, and learns the group's members once. Run
// does the rest.
func Open(cfg Config) (*Member, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("node id is empty")
	}
	if cfg.Dir == "" {
		return nil, errors.New("store directory is empty")
	}
	if cfg.Group == "" {
		cfg.Group = "default"
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 2
	}
	if cfg.Weight == 0 {
		cfg.Weight = 1
	}
	if cfg.GarbageGrace == 0 {
		cfg.GarbageGrace = DefaultGarbageGrace
	}
	src, err := memberSource(cfg)
	if err != nil {
		return nil, err
	}
	if src == nil && cfg.ClientOnly && !cfg.NoNodeTier {
		return nil, errors.New("a client-only node needs a member source (--members, --members-dns or --members-service)")
	}
	m := &Member{cfg: cfg, auth: cfg.Auth}
	m.admin = &admin{m: m}
	if m.store, err = cas.OpenStore(cfg.Dir, cas.Limits{CacheSize: cfg.CacheSize, FreeFloor: cfg.FreeFloor}); err != nil {
		return nil, err
	}
	if m.home, err = volume.Open(m.store, filepath.Join(cfg.Dir, "meta")); err != nil {
		return nil, err
	}
	if cfg.MemberGrace == 0 {
		cfg.MemberGrace = DefaultMemberGrace
	}
	m.metrics = metrics.New(m.store)
	m.metrics.SetBuildInfo(cmp.Or(cfg.Version, "dev"), cfg.NodeID, cfg.Group)
	m.group = group.New(group.Config{Name: cfg.Group, Member: cfg.NodeID, Home: m.home, Store: m.store,
		Replicas: cfg.Replicas, Metrics: m.metrics, ClientOnly: cfg.ClientOnly, Grace: max(cfg.MemberGrace, 0)})
	m.group.SetWeight(cfg.Weight)
	if !cfg.NoNodeTier {
		if m.node, err = node.Open(filepath.Join(cfg.Dir, "node"), m.group); err != nil {
			return nil, err
		}
		m.node.Room = m.room
		m.metrics.WatchOutbox(m.node.Outbox)
	}
	if !cfg.ClientOnly {
		m.metrics.WatchVolumes(m.homeVolumes)
	}
	if src != nil && m.auth == nil {
		if m.auth, err = wire.NewAuth(cfg.PeerSecretFile, cfg.PeerCert, cfg.PeerKey, cfg.PeerCA); err != nil {
			return nil, err
		}
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if err := m.listen(src); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// listen opens the metrics and peer listeners and the member source, and
// takes the first member list.
func (m *Member) listen(src sourceFunc) error {
	var err error
	if m.cfg.MetricsAddress != "" {
		if m.metricsL, err = net.Listen("tcp", m.cfg.MetricsAddress); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	if src == nil {
		return nil
	}
	s, err := src(m.ctx)
	if err != nil {
		return err
	}
	m.members = group.NewMembership(m.group, s, m.auth, membershipInterval)
	if m.cfg.PeerAddress != "" && !m.cfg.ClientOnly {
		if m.peerL, err = net.Listen("tcp", m.cfg.PeerAddress); err != nil {
			return fmt.Errorf("peer address: %w", err)
		}
	}
	m.members.Refresh(m.ctx)
	return nil
}

// Run serves the peer protocol and the metrics and runs membership,
// re-replication and the committer, until ctx ends or Close is called.
// Mounted pods do not depend on it: their reads never go through it.
func (m *Member) Run(ctx context.Context) {
	m.runs.Add(1)
	defer m.runs.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(m.ctx, cancel)()
	var wg sync.WaitGroup
	goRun := func(f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx)
		}()
	}
	if m.node != nil {
		goRun(m.node.Run)
	}
	if m.metricsL != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", m.metrics.Handler())
		goRun(func(ctx context.Context) {
			serveHTTP(ctx, m.metricsL, &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second})
		})
	}
	if m.peerL != nil {
		goRun(func(ctx context.Context) {
			if err := wire.NewServer(m, m.auth, m.metrics).ListenAndServe(ctx, m.peerL); err != nil {
				klog.ErrorS(err, "Peer server")
			}
		})
	}
	goRun(func(ctx context.Context) {
		m.group.RunCollector(ctx, collectInterval, func() group.CollectOptions { return m.collectOptions(false) })
	})
	goRun(m.relieve)
	if m.members != nil {
		goRun(m.members.Run)
		if !m.cfg.ClientOnly {
			var pinned func(cas.Digest) bool
			if m.node != nil {
				pinned = m.node.Pinned
			}
			goRun(func(ctx context.Context) { m.group.RunReconciler(ctx, reconcileInterval, pinned) })
		}
	}
	wg.Wait()
}

// serveHTTP serves srv on l until ctx ends.
func serveHTTP(ctx context.Context, l net.Listener, srv *http.Server) {
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	srv.Serve(l)
}

// Close stops Run and the member's listeners and waits for Run to return.
func (m *Member) Close() {
	m.cancel()
	for _, l := range []net.Listener{m.peerL, m.metricsL} {
		if l != nil {
			l.Close()
		}
	}
	m.runs.Wait()
}

// Group returns the member's view of its group: routing, placement, liveness.
func (m *Member) Group() *group.Group { return m.group }

// Node returns the member's node tier, or nil without one.
func (m *Member) Node() *node.Node { return m.node }

// Store returns the member's blob store.
func (m *Member) Store() *cas.Store { return m.store }

// Home returns the member's volume home.
func (m *Member) Home() *volume.Home { return m.home }

// Metrics returns the member's metrics.
func (m *Member) Metrics() *metrics.Set { return m.metrics }

// PeerHandler returns the member's peer protocol handler, for serving it on
// a listener of the caller's own.
func (m *Member) PeerHandler() http.Handler { return wire.NewServer(m, m.auth, m.metrics).Handler() }
