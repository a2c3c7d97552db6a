// Command cachegroup-csi is the cachegroup CSI driver: a node plugin that
// mounts cache volumes for pods and holds the cache group's data, a
// controller that creates volumes and snapshots, or both in one process.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/driver"
)

// sizeFlag is a byte count written like a Kubernetes quantity (20Gi).
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
	)
	flag.StringVar(&mode, "mode", "all", "services to serve: node, controller or all")
	flag.StringVar(&endpoint, "endpoint", "unix:///csi/csi.sock", "CSI endpoint")
	flag.StringVar(&cfg.NodeID, "node-id", host, "this node's name: the member's identity")
	flag.StringVar(&cfg.Name, "driver-name", driver.DefaultName, "CSI driver name")
	flag.StringVar(&cfg.StoreDir, "store", "/var/lib/cachegroup", "store directory (a hostPath cache disk)")
	flag.Var(sizeFlag{&cfg.CacheSize}, "cache-size", "most bytes of cached data kept on this member, e.g. 100Gi (0: no limit but the floor)")
	cfg.FreeFloor = 1 << 30
	flag.Var(sizeFlag{&cfg.FreeFloor}, "free-floor", "free space always left on the store's disk")
	flag.StringVar(&cfg.Group, "group", "default", "this member's cache group")
	flag.StringVar(&members, "members", "", "static member list NAME=HOST:PORT,... (empty: a group of one, this member)")
	klog.InitFlags(nil)
	flag.Parse()

	cfg.Mode = driver.Mode(mode)
	if members != "" {
		cfg.Members = strings.Split(members, ",")
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
	go func() {
		s := <-sig
		klog.InfoS("Stopping; mounted pods keep working", "signal", s.String())
		d.Stop()
	}()
	if err := d.Serve(l); err != nil {
		klog.ErrorS(err, "Serve")
		os.Exit(1)
	}
	klog.Flush()
}
