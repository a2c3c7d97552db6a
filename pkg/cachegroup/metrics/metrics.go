// Package metrics holds a member's Prometheus metrics, which every layer of
// the member counts into. It imports nothing of the project.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Set is a member's Prometheus metrics, in a registry of its own so several
// members can live in one process (tests).
type Set struct {
	reg *prometheus.Registry

	// FetchBytes and FetchBlobs count blobs a node needed, by where they
	// came from: local (already on disk), owner, or peer (a sharing node).
	FetchBytes *prometheus.CounterVec
	FetchBlobs *prometheus.CounterVec
	// ServedBytes counts bytes this member served to others, as owner or as
	// peer (a node copy offered by a sharing mount).
	ServedBytes *prometheus.CounterVec
	// Refused counts peer requests refused, by reason.
	Refused *prometheus.CounterVec
	// Corrupt counts blobs that failed verification and were discarded.
	Corrupt        prometheus.Counter
	HydrateSeconds prometheus.Histogram
	CommitSeconds  prometheus.Histogram
	Commits        *prometheus.CounterVec
	Evicted        prometheus.Counter
	DroppedFiles   prometheus.Counter
	MembersSeen    prometheus.Gauge
	MembersLive    prometheus.Gauge
	// Replicated counts blobs re-replication pushed to owners and dropped
	// here after they moved; ReplicationPending the blobs still to check.
	Replicated         *prometheus.CounterVec
	ReplicationPending prometheus.Gauge
	OwnedBlobs         prometheus.Gauge
	OwnedBytes         prometheus.Gauge
	// BelowR is the blobs held here with fewer than R copies known in the
	// group, as of the last re-replication pass; BlobPasses counts passes.
	BelowR     prometheus.Gauge
	BlobPasses prometheus.Counter
	// PassDown is the members the last pass found down (and worked around).
	PassDown prometheus.Gauge
	// Lookups counts blob requests this member answered as a tier of the
	// cache (owner, or peer for a sharing node), hit or miss; the node
	// tier's are derived from FetchBlobs (see lookups.go).
	Lookups *prometheus.CounterVec
	// CommitRetries counts commits that failed an attempt RetryThreshold
	// times or more; Corrupt counts the copies found wrong.
	CommitRetries prometheus.Counter
	Steady
}

// Store is what the metrics read of the member's blob store.
type Store interface {
	Used() int64
	Capacity() int64
}

// New returns a member's metrics; store usage is read from s.
func New(s Store) *Set {
	m := &Set{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.Steady = newSteady(f)
	m.FetchBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_fetch_bytes_total",
		Help: "Bytes of blobs a node needed for its snapshots, by source (local, owner, peer)."}, []string{"source"})
	m.FetchBlobs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_fetch_blobs_total",
		Help: "Blobs a node needed for its snapshots, by source: local is a hit, owner and peer are misses."}, []string{"source"})
	m.ServedBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_served_bytes_total",
		Help: "Bytes of blobs served to other members, as owner or as a sharing peer."}, []string{"as"})
	m.Refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_refused_requests_total",
		Help: "Peer requests refused, by reason."}, []string{"reason"})
	m.Corrupt = prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_corrupt_blobs_total",
		Help: "Blobs that failed verification and were discarded."})
	m.HydrateSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cachegroup_hydrate_seconds",
		Help: "Time to materialise a snapshot on this node.", Buckets: prometheus.ExponentialBuckets(0.01, 3, 10)})
	m.CommitSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "cachegroup_commit_seconds",
		Help: "Time to commit one pod's writes.", Buckets: prometheus.ExponentialBuckets(0.01, 3, 10)})
	m.Commits = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_commits_total",
		Help: "Outbox entries processed, by result (applied, refused, failed, discarded, quarantined)."}, []string{"result"})
	m.Evicted = prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_evicted_files_total",
		Help: "Files evicted from volumes to stay within quota."})
	m.DroppedFiles = prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_dropped_special_files_total",
		Help: "Device files, FIFOs and sockets dropped from commits."})
	m.MembersSeen = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_members",
		Help: "Members the membership source lists."})
	m.MembersLive = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_members_live",
		Help: "Members that answered their last health check."})
	m.Replicated = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_rereplicated_blobs_total",
		Help: "Blobs re-replication pushed to their owners or dropped here after they moved."}, []string{"action"})
	m.ReplicationPending = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_rereplication_pending_blobs",
		Help: "Copies at other members the running re-replication pass has still to check."})
	m.OwnedBlobs = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_owned_blobs",
		Help: "Blobs this member owns, as of the last re-replication pass."})
	m.OwnedBytes = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_owned_bytes",
		Help: "Bytes this member owns, as of the last re-replication pass."})
	m.BelowR = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_blobs_below_r",
		Help: "Blobs held here with fewer than R copies known in the group, as of the last re-replication pass."})
	m.BlobPasses = prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_rereplication_passes_total",
		Help: "Re-replication passes over the blobs of the store completed."})
	m.PassDown = prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_rereplication_last_pass_down_members",
		Help: "Members the last completed re-replication pass found down."})
	m.Lookups = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_tier_requests_total",
		Help: lookupsHelp}, []string{"tier", "result"})
	m.CommitRetries = prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_commit_retries_past_threshold_total",
		Help: "Commit attempts that failed after the entry had already failed the retry threshold's number of times."})
	for _, c := range []prometheus.Collector{m.BelowR, m.BlobPasses, m.PassDown, m.Lookups, m.CommitRetries} {
		f(c)
	}
	f(nodeTier{m.FetchBlobs})
	// Every series a dashboard or an alert reads exists from the start, at
	// zero, so that rates and increases see the first event.
	for _, src := range []string{"local", "owner", "peer"} {
		m.FetchBytes.WithLabelValues(src)
		m.FetchBlobs.WithLabelValues(src)
	}
	for _, as := range []string{"owner", "peer"} {
		m.ServedBytes.WithLabelValues(as)
		m.Lookups.WithLabelValues(as, "hit")
		m.Lookups.WithLabelValues(as, "miss")
	}
	for _, r := range []string{"applied", "refused", "failed", "discarded", "quarantined"} {
		m.Commits.WithLabelValues(r)
	}
	for _, a := range []string{"pushed", "dropped"} {
		m.Replicated.WithLabelValues(a)
	}
	for _, c := range []prometheus.Collector{m.FetchBytes, m.FetchBlobs, m.ServedBytes, m.Refused, m.Corrupt,
		m.HydrateSeconds, m.CommitSeconds, m.Commits, m.Evicted, m.DroppedFiles, m.MembersSeen, m.MembersLive,
		m.Replicated, m.ReplicationPending, m.OwnedBlobs, m.OwnedBytes} {
		f(c)
	}
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cachegroup_store_bytes",
		Help: "Bytes of blobs in the local store."}, func() float64 { return float64(s.Used()) }))
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cachegroup_store_capacity_bytes",
		Help: "Bytes the local store may still take."}, func() float64 { return float64(s.Capacity()) }))
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Set) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Gather returns the metrics' current values.
func (m *Set) Gather() ([]*dto.MetricFamily, error) { return m.reg.Gather() }
