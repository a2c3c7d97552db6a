// Command cachegroup-csi is the cachegroup CSI driver: a node plugin that
// mounts cache volumes for pods and holds the cache group's data, a
// controller that creates volumes and snapshots, or both in one process.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/driver"
)

// memoryLimit sets the Go runtime's soft memory limit to 90% of the
// container's, unless GOMEMLIMIT says otherwise: the runtime then collects
// garbage harder as it nears the limit instead of letting the kernel kill
// the node plugin, with every mount it serves, for garbage it had not
// collected yet. The tenth left is for what the runtime does not count (the
// binary's pages, the kernel's for its threads).
func memoryLimit() (int64, bool) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0, false
	}
	cgroups, _ := os.ReadFile("/proc/self/cgroup")
	limit, ok := containerMemory("/sys/fs/cgroup", cgroups)
	if ok {
		debug.SetMemoryLimit(limit / 10 * 9)
	}
	return limit, ok
}

// containerMemory returns the memory limit of the cgroup this process is in,
// as cgroups (the text of /proc/self/cgroup) names it below root:
// memory.max (cgroup v2) or memory.limit_in_bytes (v1), at the cgroup's own
// path or, where a container sees its cgroup as the mount's top, there.
func containerMemory(root string, cgroups []byte) (int64, bool) {
	var paths []string
	for line := range strings.SplitSeq(string(cgroups), "\n") {
		f := strings.SplitN(line, ":", 3)
		switch {
		case len(f) != 3:
		case f[0] == "0" && f[1] == "":
			paths = append(paths, filepath.Join(root, f[2], "memory.max"))
		case slices.Contains(strings.Split(f[1], ","), "memory"):
			paths = append(paths, filepath.Join(root, "memory", f[2], "memory.limit_in_bytes"))
		}
	}
	paths = append(paths, filepath.Join(root, "memory.max"), filepath.Join(root, "memory", "memory.limit_in_bytes"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// "max" (v2), or v1's "unlimited", a page short of 2^63.
		if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && n > 0 && n < 1<<62 {
			return n, true
		}
	}
	return 0, false
}

// sizeFlag is a byte count written as a Kubernetes quantity (20Gi, 1.5Gi).
type sizeFlag struct{ v *int64 }

func (s sizeFlag) String() string {
	if s.v == nil {
		return "0"
	}
	return fmt.Sprint(*s.v)
}

func (s sizeFlag) Set(v string) error {
	n, err := driver.ParseSize(v)
	if err != nil {
		return err
	}
	*s.v = n
	return nil
}

func main() {
	host, _ := os.Hostname()
	var (
		cfg      driver.Config
		mode     string
		endpoint string
		members  string
		version  bool
	)
	flag.BoolVar(&version, "version", false, "print the driver's version and exit")
	flag.StringVar(&mode, "mode", "all", "services to serve: node, controller or all")
	flag.StringVar(&endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint")
	flag.StringVar(&cfg.Member.NodeID, "node-id", host, "this node's name: the member's identity")
	flag.StringVar(&cfg.Name, "driver-name", driver.DefaultName, "CSI driver name")
	flag.StringVar(&cfg.Member.Dir, "store", "/var/lib/cachegroup", "store directory (a hostPath cache disk)")
	flag.Var(sizeFlag{&cfg.Member.CacheSize}, "cache-size", "most bytes of cached data kept on this member, e.g. 100Gi (0: no limit but the floor)")
	cfg.Member.FreeFloor = 1 << 30
	flag.Var(sizeFlag{&cfg.Member.FreeFloor}, "free-floor", "free space always left on the store's disk")
	flag.StringVar(&cfg.Member.Group, "group", "default", "this member's cache group")
	flag.StringVar(&members, "members", "", "static member list NAME=HOST:PORT,... (no member source: a group of one, this member)")
	flag.StringVar(&cfg.Member.MembersDNS, "members-dns", "", "DNS name whose addresses are the members (a headless Service)")
	flag.StringVar(&cfg.Member.MembersService, "members-service", "", "NAMESPACE/NAME of a headless Service whose ready endpoints are the members")
	flag.StringVar(&cfg.Member.PeerAddress, "peer-address", "", "HOST:PORT this member serves its peers on, e.g. :7600")
	flag.StringVar(&cfg.Member.PeerSecretFile, "peer-secret-file", "", "file holding the group's shared secret (at least 16 bytes), and on a second line the previous one while members move to a new secret; re-read when it changes")
	flag.StringVar(&cfg.Member.PeerCert, "peer-tls-cert", "", "certificate for mutual TLS between members")
	flag.StringVar(&cfg.Member.PeerKey, "peer-tls-key", "", "key of --peer-tls-cert")
	flag.StringVar(&cfg.Member.PeerCA, "peer-tls-ca", "", "CA that signs every member's certificate")
	flag.IntVar(&cfg.Member.Replicas, "replicas", 2, "copies of every blob and head kept in the group (R)")
	flag.Float64Var(&cfg.Member.Weight, "weight", 1, "this member's share of placement, e.g. its disk size in TiB")
	flag.BoolVar(&cfg.Member.ClientOnly, "client-only", false, "mount volumes for this node's pods without holding group data")
	flag.StringVar(&cfg.Member.MetricsAddress, "metrics-address", "", "HOST:PORT to serve Prometheus metrics on, e.g. :9808")
	flag.DurationVar(&cfg.Member.MemberGrace, "member-grace-period", cachegroup.DefaultMemberGrace,
		"how long another member may be down (restarting, rolled) and keep its place: no data is moved to stand-ins meanwhile; reads and commits fall back along the placement order (negative: none)")
	flag.DurationVar(&cfg.Member.GarbageGrace, "garbage-grace-period", cachegroup.DefaultGarbageGrace,
		"how long blobs no volume references any more are kept before they are deleted, and a replaced head stays live (nodes may still be hydrating it)")
	klog.InitFlags(nil)
	flag.Parse()
	if version {
		fmt.Println("cachegroup-csi", driver.Version)
		return
	}

	if limit, ok := memoryLimit(); ok {
		klog.InfoS("Garbage collection paced to the container's memory limit", "limit", limit, "soft", debug.SetMemoryLimit(-1))
	}
	cfg.Mode = driver.Mode(mode)
	cfg.Member.Version = driver.Version
	if members != "" {
		cfg.Member.Members = strings.Split(members, ",")
	}
	d, err := driver.New(cfg)
	if err != nil {
		klog.ErrorS(err, "Start driver")
		os.Exit(1)
	}
	l, err := driver.Listen(endpoint)
	if err != nil {
		klog.ErrorS(err, "Listen", "endpoint", endpoint)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	stopped := make(chan struct{})
	go func() {
		s := <-sig
		klog.InfoS("Stopping; mounted pods keep working", "signal", s.String())
		d.Stop()
		close(stopped)
	}()
	if err := d.Serve(l); err != nil {
		klog.ErrorS(err, "Serve")
		os.Exit(1)
	}
	// Serve returns as soon as the stop begins: the node's loops end (and
	// drop the layer disks made ahead) before the process does.
	<-stopped
	klog.InfoS("Stopped")
	klog.Flush()
}
