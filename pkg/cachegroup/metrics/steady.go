package metrics

import "github.com/prometheus/client_golang/prometheus"

// Steady counts what keeps a member's disk bounded: garbage collection,
// eviction of node copies, and the commits dropped rather than retried.
type Steady struct {
	// Collections counts garbage collections by result: complete, or
	// incomplete (a member did not answer; nothing was deleted).
	Collections *prometheus.CounterVec
	// Garbage is the blobs of the store no live root referenced at the last
	// collection.
	Garbage prometheus.Gauge
	// CollectedBlobs and CollectedBytes count the garbage deleted.
	CollectedBlobs, CollectedBytes prometheus.Counter
	// EvictedBlobs and EvictedBytes count node copies and snapshots evicted
	// to make room, least recently used first.
	EvictedBlobs, EvictedBytes prometheus.Counter
	// DroppedCommits counts pods' writes given up, by reason.
	DroppedCommits *prometheus.CounterVec
	// OutboxBytes is what the outbox holds on the node's disk.
	OutboxBytes prometheus.Gauge
}

// DropReasons are the reasons a commit is dropped for.
var DropReasons = []string{"no-space", "outbox-full", "too-large", "volume-gone", "invalid", "quarantined"}

func newSteady(register func(prometheus.Collector)) Steady {
	s := Steady{
		Collections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_collections_total",
			Help: "Garbage collections, by result (complete; incomplete: a member did not answer, nothing deleted)."}, []string{"result"}),
		Garbage: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_garbage_blobs",
			Help: "Blobs in the store that no live root referenced at the last collection."}),
		CollectedBlobs: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_collected_blobs_total",
			Help: "Blobs deleted by garbage collection."}),
		CollectedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_collected_bytes_total",
			Help: "Bytes deleted by garbage collection."}),
		EvictedBlobs: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_evicted_blobs_total",
			Help: "Node copies evicted to make room, least recently used first."}),
		EvictedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "cachegroup_evicted_bytes_total",
			Help: "Bytes of node copies evicted to make room."}),
		DroppedCommits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cachegroup_dropped_commits_total",
			Help: "Pods' writes given up instead of retried, by reason (no-space, outbox-full, too-large, volume-gone, invalid, quarantined)."}, []string{"reason"}),
		OutboxBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cachegroup_outbox_bytes",
			Help: "Bytes of pods' writes waiting in the outbox to be committed."}),
	}
	// Every series from zero, so that rates and alerts see the first one.
	for _, r := range []string{"complete", "incomplete"} {
		s.Collections.WithLabelValues(r)
	}
	for _, r := range DropReasons {
		s.DroppedCommits.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{s.Collections, s.Garbage, s.CollectedBlobs, s.CollectedBytes,
		s.EvictedBlobs, s.EvictedBytes, s.DroppedCommits, s.OutboxBytes} {
		register(c)
	}
	return s
}
