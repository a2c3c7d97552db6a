package cachegroup

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/internal/gentree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// stageFiles sizes BenchmarkStageMemory: n gives a tree of about 1.25 n
// small files in n/8 directories.
var stageFiles = flag.Int("stage-files", 100000, "BenchmarkStageMemory, BenchmarkCommitMemory: tree size n (about 1.25 n files)")

// heapProfile names a file for the heap profile taken at the peak.
var heapProfile = flag.String("heap-profile", "", "BenchmarkStageMemory, BenchmarkCommitMemory: write the heap profile at the peak here")

// BenchmarkStageMemory stages, on a fresh client-only node, a tree of many
// small files held by one member, and reports the peak heap in use while it
// stages (sampled every 20 ms, member and client together, as they share
// the process), and the processor time it takes: what issue 11 bounds by
// the batch, not the tree.
func BenchmarkStageMemory(b *testing.B) {
	n := *stageFiles
	ms := newGroup(b, 1)
	ctx := context.Background()
	a := ms[0]
	vol, err := a.group.CreateVolume(ctx, volume.Spec{Name: "bench", Quota: 1 << 40}, "")
	if err != nil {
		b.Fatal(err)
	}
	spec := gentree.Spec{Seed: 7, Files: n * 5 / 4, Dirs: n / 8, TotalBytes: int64(n) * 100, MaxJarBytes: 4 << 10}
	var st gentree.Stats
	head := land(b, a, vol, func(upper string) {
		if st, err = gentree.Generate(upper, spec); err != nil {
			b.Fatal(err)
		}
	}, time.Hour)
	var (
		peak, base uint64
		cpu        time.Duration
	)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		c := newClient(b, ms)
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		base = max(base, m.HeapInuse)
		stop := sampleHeap()
		cpu0 := cpuTime()
		b.StartTimer()
		if _, err := c.node.Materialize(ctx, head.Root, node.Want{VolumeID: vol.ID}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += cpuTime() - cpu0
		peak = max(peak, stop())
		b.StartTimer()
	}
	secs := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(float64(st.Files)/secs, "files/s")
	b.ReportMetric(float64(peak)/(1<<20), "peak-MB")
	b.ReportMetric(float64(base)/(1<<20), "base-MB")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	b.Log(fmt.Sprintf("%d files, %d directories", st.Files, st.Dirs))
}

// cpuTime is the processor time this process has used, member and client
// together: a figure less swayed than the wall clock by other work on the
// machine.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCommitMemory commits, on one member, an upper layer of many
// small files, and reports the peak heap in use while the commit is scanned,
// pushed and applied, and the processor time it takes.
func BenchmarkCommitMemory(b *testing.B) {
	n := *stageFiles
	spec := gentree.Spec{Seed: 7, Files: n * 5 / 4, Dirs: n / 8, TotalBytes: int64(n) * 100, MaxJarBytes: 4 << 10}
	ctx := context.Background()
	var peak uint64
	var cpu time.Duration
	for range b.N {
		b.StopTimer()
		ms := newGroup(b, 1)
		a := ms[0]
		vol, err := a.group.CreateVolume(ctx, volume.Spec{Name: "bench", Quota: 1 << 40}, "")
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var stop func() uint64
		var cpu0 time.Duration
		submit(b, a, vol, "/pods/import", func(upper string) {
			if _, err := gentree.Generate(upper, spec); err != nil {
				b.Fatal(err)
			}
			runtime.GC()
			stop, cpu0 = sampleHeap(), cpuTime()
			b.StartTimer()
		})
		wctx, cancel := context.WithTimeout(ctx, time.Hour)
		err = a.node.WaitIdle(wctx)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += cpuTime() - cpu0
		peak = max(peak, stop())
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-MB")
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}

// sampleHeap samples the heap in use every 20 ms until the returned
// function is called, which returns the highest figure seen (and, with
// -heap-profile, writes the heap profile taken at it).
func sampleHeap() (stop func() uint64) {
	var (
		wg   sync.WaitGroup
		peak uint64
		prof bytes.Buffer
		done = make(chan struct{})
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		var m runtime.MemStats
		var profiled uint64 // the heap in use when the profile was last taken
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&m)
			if *heapProfile != "" && m.HeapInuse > profiled+profiled/20 {
				profiled = m.HeapInuse
				runtime.GC() // the profile tells of the last collection
				prof.Reset()
				pprof.WriteHeapProfile(&prof)
			}
			peak = max(peak, m.HeapInuse)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		if *heapProfile != "" {
			os.WriteFile(*heapProfile, prof.Bytes(), 0o644)
		}
		return peak
	}
}
