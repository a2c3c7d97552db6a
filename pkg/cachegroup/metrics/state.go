package metrics

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// MemberState is one member of the group as this member sees it.
type MemberState struct {
	Name   string
	Weight float64
	Up     bool
	// DownFor is how long it has been down; Gone says it is down past the
	// grace period (its blobs go to stand-ins).
	DownFor time.Duration
	Gone    bool
}

// VolumeState is one volume this member is a home of.
type VolumeState struct {
	ID, Name   string
	Generation uint64
	Bytes      int64
	Files      int64
	Quota      int64
	Updated    time.Time
}

var (
	buildInfoDesc = prometheus.NewDesc("cachegroup_build_info", "The driver's version and Go version, the member's name and group; always 1.",
		[]string{"version", "goversion", "member", "group"}, nil)
	memberUpDesc = prometheus.NewDesc("cachegroup_member_up", "1 if the member answered its last health check, by member name.",
		[]string{"member"}, nil)
	memberDownDesc = prometheus.NewDesc("cachegroup_member_down_seconds", "How long the member has been down (0 while up), by member name.",
		[]string{"member"}, nil)
	memberGoneDesc = prometheus.NewDesc("cachegroup_member_gone", "1 if the member is down past the grace period: its blobs are re-replicated to stand-ins.",
		[]string{"member"}, nil)
	memberWeightDesc = prometheus.NewDesc("cachegroup_member_weight", "The member's placement weight, by member name.",
		[]string{"member"}, nil)
	graceDesc  = prometheus.NewDesc("cachegroup_member_grace_seconds", "How long a member may be down and keep its place.", nil, nil)
	volGenDesc = prometheus.NewDesc("cachegroup_volume_generation", "The generation of the volume's head, for the volumes this member is a home of.",
		[]string{"volume", "name"}, nil)
	volBytesDesc = prometheus.NewDesc("cachegroup_volume_bytes", "Bytes of files in the volume's head, for the volumes this member is a home of.",
		[]string{"volume", "name"}, nil)
	volQuotaDesc = prometheus.NewDesc("cachegroup_volume_quota_bytes", "The volume's quota, for the volumes this member is a home of.",
		[]string{"volume", "name"}, nil)
	volFilesDesc = prometheus.NewDesc("cachegroup_volume_files", "Entries in the volume's head, for the volumes this member is a home of.",
		[]string{"volume", "name"}, nil)
	volCommitDesc = prometheus.NewDesc("cachegroup_volume_last_commit_timestamp_seconds", "When the volume's head last changed (Unix time), for the volumes this member is a home of.",
		[]string{"volume", "name"}, nil)
	outboxDepthDesc = prometheus.NewDesc("cachegroup_outbox_entries", "Ended pods' writes waiting in this node's outbox to be committed.", nil, nil)
	outboxAgeDesc   = prometheus.NewDesc("cachegroup_outbox_oldest_seconds", "Age of the oldest entry in this node's outbox (0 when empty).", nil, nil)
	nodeTierDesc    = prometheus.NewDesc("cachegroup_tier_requests_total", lookupsHelp, []string{"tier", "result"}, nil)
)

// lookupsHelp is the help of cachegroup_tier_requests_total, whose series
// come from two collectors.
const lookupsHelp = "Blob requests answered by a tier of the cache (node: a node's own snapshots; owner; peer: a sharing node), by result (hit, miss)."

// collector is a prometheus.Collector made of a describe list and a collect
// function: the values are read when scraped, so the series follow the
// group (members, volumes) without any to delete.
type collector struct {
	descs   []*prometheus.Desc
	collect func(ch chan<- prometheus.Metric)
}

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }

// SetBuildInfo exports cachegroup_build_info for version, of member of group.
func (m *Set) SetBuildInfo(version, member, group string) {
	m.reg.Register(collector{[]*prometheus.Desc{buildInfoDesc}, func(ch chan<- prometheus.Metric) {
		ch <- prometheus.MustNewConstMetric(buildInfoDesc, prometheus.GaugeValue, 1, version, runtime.Version(), member, group)
	}})
}

// WatchMembers exports the state of each member of the group, read from
// states when scraped, and the grace period.
func (m *Set) WatchMembers(states func() []MemberState, grace time.Duration) {
	m.reg.Register(collector{[]*prometheus.Desc{memberUpDesc, memberDownDesc, memberGoneDesc, memberWeightDesc, graceDesc}, func(ch chan<- prometheus.Metric) {
		ch <- prometheus.MustNewConstMetric(graceDesc, prometheus.GaugeValue, grace.Seconds())
		for _, s := range states() {
			up, gone := 0.0, 0.0
			if s.Up {
				up = 1
			}
			if s.Gone {
				gone = 1
			}
			ch <- prometheus.MustNewConstMetric(memberUpDesc, prometheus.GaugeValue, up, s.Name)
			ch <- prometheus.MustNewConstMetric(memberDownDesc, prometheus.GaugeValue, s.DownFor.Seconds(), s.Name)
			ch <- prometheus.MustNewConstMetric(memberGoneDesc, prometheus.GaugeValue, gone, s.Name)
			ch <- prometheus.MustNewConstMetric(memberWeightDesc, prometheus.GaugeValue, s.Weight, s.Name)
		}
	}})
}

// maxVolumeSeries bounds the volumes exported: a member is a home of R/N of
// the group's volumes, and a scrape must stay small.
const maxVolumeSeries = 2000

// WatchVolumes exports the volumes this member is a home of, read from
// volumes when scraped (at most maxVolumeSeries of them).
func (m *Set) WatchVolumes(volumes func() []VolumeState) {
	m.reg.Register(collector{[]*prometheus.Desc{volGenDesc, volBytesDesc, volQuotaDesc, volFilesDesc, volCommitDesc}, func(ch chan<- prometheus.Metric) {
		vs := volumes()
		for _, v := range vs[:min(len(vs), maxVolumeSeries)] {
			ch <- prometheus.MustNewConstMetric(volGenDesc, prometheus.GaugeValue, float64(v.Generation), v.ID, v.Name)
			ch <- prometheus.MustNewConstMetric(volBytesDesc, prometheus.GaugeValue, float64(v.Bytes), v.ID, v.Name)
			ch <- prometheus.MustNewConstMetric(volQuotaDesc, prometheus.GaugeValue, float64(v.Quota), v.ID, v.Name)
			ch <- prometheus.MustNewConstMetric(volFilesDesc, prometheus.GaugeValue, float64(v.Files), v.ID, v.Name)
			ch <- prometheus.MustNewConstMetric(volCommitDesc, prometheus.GaugeValue, float64(v.Updated.UnixNano())/1e9, v.ID, v.Name)
		}
	}})
}

// WatchOutbox exports the depth of the node's outbox and the age of its
// oldest entry, read from outbox when scraped.
func (m *Set) WatchOutbox(outbox func() (entries int, oldest time.Time)) {
	m.reg.Register(collector{[]*prometheus.Desc{outboxDepthDesc, outboxAgeDesc}, func(ch chan<- prometheus.Metric) {
		n, oldest := outbox()
		age := 0.0
		if n > 0 && !oldest.IsZero() {
			age = max(time.Since(oldest).Seconds(), 0)
		}
		ch <- prometheus.MustNewConstMetric(outboxDepthDesc, prometheus.GaugeValue, float64(n))
		ch <- prometheus.MustNewConstMetric(outboxAgeDesc, prometheus.GaugeValue, age)
	}})
}

// nodeTier adds the node tier to cachegroup_tier_requests_total, from the
// blobs nodes needed: one already on disk is a hit, one fetched (from an
// owner or a peer) a miss. It is unchecked (no Describe), since it shares
// the family of Lookups.
type nodeTier struct{ fetch *prometheus.CounterVec }

func (nodeTier) Describe(chan<- *prometheus.Desc) {}

func (t nodeTier) Collect(ch chan<- prometheus.Metric) {
	var hit, miss float64
	for _, src := range []string{"local", "owner", "peer"} {
		var d dto.Metric
		if err := t.fetch.WithLabelValues(src).Write(&d); err != nil {
			continue
		}
		if src == "local" {
			hit += d.GetCounter().GetValue()
		} else {
			miss += d.GetCounter().GetValue()
		}
	}
	ch <- prometheus.MustNewConstMetric(nodeTierDesc, prometheus.CounterValue, hit, "node", "hit")
	ch <- prometheus.MustNewConstMetric(nodeTierDesc, prometheus.CounterValue, miss, "node", "miss")
}
