package cluster

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
)

// MetricsText fetches m's /metrics.
func (m *Member) MetricsText() (string, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + m.MetricsAddr + "/metrics")
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", m.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("%s metrics: %w", m.Name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s metrics: %s", m.Name, resp.Status)
	}
	return string(b), nil
}

// Metric returns the sum of m's series of metric name whose labels include
// every "key=value" of labels (0 when there is none).
func (m *Member) Metric(name string, labels ...string) (float64, error) {
	text, err := m.MetricsText()
	if err != nil {
		return 0, err
	}
	return ParseMetric(text, name, labels), nil
}

// ParseMetric sums the samples of metric name in the Prometheus text format
// whose labels include every "key=value" of labels.
func ParseMetric(text, name string, labels []string) float64 {
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

// Poll calls cond every interval until it reports done or timeout passes;
// it returns cond's last message when it times out.
func Poll(timeout, interval time.Duration, cond func() (bool, string)) (bool, string) {
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

// WaitLive waits up to timeout until every one of ms sees n live members
// (itself included).
func WaitLive(timeout time.Duration, n int, ms ...*Member) error {
	return waitCount(timeout, "cachegroup_members_live", "live members", n, ms)
}

// WaitMembers waits up to timeout until every one of ms counts n members,
// live or not (itself included).
func WaitMembers(timeout time.Duration, n int, ms ...*Member) error {
	return waitCount(timeout, "cachegroup_members", "members", n, ms)
}

// waitCount waits until metric is n on every one of ms.
func waitCount(timeout time.Duration, metric, what string, n int, ms []*Member) error {
	ok, msg := Poll(timeout, 200*time.Millisecond, func() (bool, string) {
		var seen []string
		done := true
		for _, m := range ms {
			text, err := m.MetricsText()
			if err != nil {
				return false, err.Error()
			}
			v := ParseMetric(text, metric, nil)
			seen = append(seen, fmt.Sprintf("%s sees %v", m.Name, v))
			done = done && int(v) == n
		}
		return done, strings.Join(seen, ", ")
	})
	if !ok {
		return fmt.Errorf("members did not all see %d %s within %v: %s", n, what, timeout, msg)
	}
	return nil
}

// BlobPath is where m's store keeps blob sum.
func (m *Member) BlobPath(sum string) string {
	return filepath.Join(m.Store, "blobs", sum[:2], sum)
}

// HasBlob reports whether m's store holds blob sum.
func (m *Member) HasBlob(sum string) bool {
	_, err := os.Lstat(m.BlobPath(sum))
	return err == nil
}

// Blobs returns the blobs in m's store with their link counts (more than
// one: a snapshot on the node links the blob).
func (m *Member) Blobs() (map[string]uint64, error) {
	out := map[string]uint64{}
	err := filepath.WalkDir(filepath.Join(m.Store, "blobs"), func(p string, e fs.DirEntry, err error) error {
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

// Owners returns the r of members that own blob sum, in rendezvous
// order: the product's placement (group.Score) with equal weights.
func Owners(sum string, members []string, r int) []string {
	ns := slices.Clone(members)
	key := "blob/" + sum
	sort.Slice(ns, func(i, j int) bool { return group.Score(key, ns[i], 1) > group.Score(key, ns[j], 1) })
	return ns[:min(r, len(ns))]
}
