package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Pods of one volume on one node never wait on each other: 16 publishes of
// a staged volume started together all succeed at once (none is Aborted),
// each pod sees the volume, and the 16 unpublishes together succeed too.
// The next generation, published by 16 pods together while its thin layer
// is being built, is built once and joined by all.
func TestConcurrentPublishesOfOneVolume(t *testing.T) {
	r := newRig(t)
	vol := r.create("shared", 1<<20)
	first := r.publish(vol, false)
	write(t, filepath.Join(first, "f"), "gen1")
	r.unpublish(vol, first)
	r.committed()

	ctx := context.Background()
	staging := filepath.Join(r.pods, "staging")
	for round, want := range []string{"gen1", "gen2"} {
		stage := func() error {
			_, err := r.d.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: vol, StagingTargetPath: staging,
				VolumeCapability: mountCap(nil)})
			return err
		}
		targets := make([]string, 16)
		errs := make([]error, 16)
		var wg sync.WaitGroup
		// The second round's stage runs with the publishes: they join it.
		var stageErr error
		if round == 0 {
			stageErr = stage()
		} else {
			wg.Add(1)
			go func() { defer wg.Done(); stageErr = stage() }()
		}
		for i := range targets {
			targets[i] = filepath.Join(r.pods, fmt.Sprintf("c%d-%d", round, i), "mount")
			if err := os.MkdirAll(filepath.Dir(targets[i]), 0o755); err != nil {
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = r.d.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: vol, StagingTargetPath: staging,
					TargetPath: targets[i], VolumeCapability: mountCap(nil), Readonly: i%4 == 3})
			}()
		}
		wg.Wait()
		if stageErr != nil {
			t.Fatal(stageErr)
		}
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, publish %d: %v", round, i, err)
			}
			if got := read(t, filepath.Join(targets[i], "f")); got != want {
				t.Fatalf("round %d, pod %d reads %q, want %q", round, i, got, want)
			}
		}
		if round == 0 {
			write(t, filepath.Join(targets[0], "f"), "gen2")
		}
		for i := range targets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = r.d.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: vol, TargetPath: targets[i]})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d, unpublish %d: %v", round, i, err)
			}
		}
		r.committed()
	}
}
