// Command soak runs a cache group for a long while under the churn of a CI
// cache and checks that it stays correct and bounded: three members and
// two client-only nodes, each the real driver binary in its own network
// namespace (internal/cluster), with small cache sizes; several hundred
// builds, a few at once, each mounting a volume through the driver's
// NodeStageVolume and NodePublishVolume (real overlay mounts), reading and
// checking every file against a model, deleting about a tenth of the tree,
// adding a tenth, rewriting some files and re-reading a hot set; one member
// restarted twice. It samples every process's metrics, disk use and memory,
// and writes a report, CSV files and PNG plots to -out.
//
// It exits 1 on a correctness failure (wrong bytes, a commit still retried
// at the end, a process that died), 2 when the run could not be set up, and
// 0 otherwise: targets of boundedness that are missed are reported, not
// failed. `make soak` runs it; `make soak SOAK_SHORT=1` is a two-minute run.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config is one soak run's shape.
type config struct {
	out         string        // report directory
	driver      string        // driver binary; built when empty
	duration    time.Duration // of the build phase
	maxBuilds   int           // the build phase also ends after this many builds
	workers     int           // builds at once
	volumes     int           // volumes, each built one build at a time
	files       int           // files of a volume's first tree
	memberCache string        // --cache-size of the members
	clientCache string        // --cache-size of the client-only nodes
	memberBytes int64
	clientBytes int64
	quota       int64         // each volume's quota
	resolveWait time.Duration // a build waits this long for its commit to leave the outbox
	drain       time.Duration // after the last build, outboxes get this long to empty
	sample      time.Duration // sampling period
	restarts    int           // restarts of member B, evenly spaced in the build phase
	downtime    time.Duration // member B is down this long at each restart
	seed        uint64
	logLevel    int
	short       bool
}

func main() {
	var c config
	short := os.Getenv("SOAK_SHORT") != "" && os.Getenv("SOAK_SHORT") != "0"
	flag.BoolVar(&c.short, "short", short, "a run of about two minutes (also SOAK_SHORT=1)")
	flag.StringVar(&c.out, "out", "bin/soak", "directory for the report, CSV files and plots")
	flag.StringVar(&c.driver, "driver", "", "driver binary (default: built from this checkout)")
	flag.DurationVar(&c.duration, "duration", 0, "length of the build phase (default 11m, short 70s)")
	flag.IntVar(&c.maxBuilds, "builds", 0, "most builds that mount (default 1500, short 300); attempts are bounded by three times that")
	flag.IntVar(&c.workers, "workers", 3, "builds at once")
	flag.IntVar(&c.volumes, "volumes", 0, "volumes (default 6, short 4)")
	flag.IntVar(&c.files, "files", 0, "files of each volume's first tree (default 350, short 150)")
	flag.StringVar(&c.memberCache, "member-cache", "", "--cache-size of the three members (default 128Mi, short 64Mi)")
	flag.StringVar(&c.clientCache, "client-cache", "64Mi", "--cache-size of the two client-only nodes")
	flag.DurationVar(&c.resolveWait, "resolve-wait", 8*time.Second, "how long a build waits for its commit to leave the outbox")
	flag.DurationVar(&c.drain, "drain", 0, "how long outboxes get to empty after the last build (default 2m, short 45s); past it an entry counts as retried forever")
	flag.DurationVar(&c.sample, "sample", 0, "sampling period (default 5s, short 2s)")
	flag.IntVar(&c.restarts, "restarts", 2, "restarts of one member during the build phase")
	flag.DurationVar(&c.downtime, "downtime", 5*time.Second, "how long the member is down at each restart")
	flag.Uint64Var(&c.seed, "seed", 1, "seed of the workload")
	flag.IntVar(&c.logLevel, "v", 1, "the drivers' klog verbosity")
	flag.Parse()
	c.defaults()
	var err error
	if c.memberBytes, err = parseSize(c.memberCache); err != nil {
		fatalf("-member-cache: %v", err)
	}
	if c.clientBytes, err = parseSize(c.clientCache); err != nil {
		fatalf("-client-cache: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once; the drivers then get SIGTERM (Pdeathsig)
	}()
	os.Exit(run(ctx, c))
}

// defaults fills what the flags left at zero, by mode.
func (c *config) defaults() {
	pick := func(full, short time.Duration) time.Duration {
		if c.short {
			return short
		}
		return full
	}
	pickN := func(full, short int) int {
		if c.short {
			return short
		}
		return full
	}
	if c.duration == 0 {
		c.duration = pick(11*time.Minute, 70*time.Second)
	}
	if c.drain == 0 {
		c.drain = pick(2*time.Minute, 45*time.Second)
	}
	if c.sample == 0 {
		c.sample = pick(5*time.Second, 2*time.Second)
	}
	if c.maxBuilds == 0 {
		c.maxBuilds = pickN(1500, 300)
	}
	if c.volumes == 0 {
		c.volumes = pickN(6, 4)
	}
	if c.files == 0 {
		c.files = pickN(350, 150)
	}
	if c.memberCache == "" {
		c.memberCache = map[bool]string{false: "128Mi", true: "64Mi"}[c.short]
	}
	// A quota well above a first tree (about 56 KiB a file on average), so
	// the tree's slow growth reaches it now and then.
	c.quota = int64(c.files) * 80 << 10
}

// parseSize reads 64Mi, 1Gi, 1000000.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	for suf, m := range map[string]int64{"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30} {
		if len(s) > 2 && s[len(s)-2:] == suf {
			s, mult = s[:len(s)-2], m
		}
	}
	var n int64
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size like 64Mi", s)
	}
	return n * mult, nil
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak: "+format+"\n", args...)
	os.Exit(2)
}

// logf prints a progress line with the time since start.
func logf(format string, args ...any) {
	fmt.Printf("%s soak: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
