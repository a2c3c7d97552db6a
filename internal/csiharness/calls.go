package csiharness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// Capability returns the volume capability a pod's volume is used with: a
// filesystem mount with mountFlags, multi-node multi-writer (every pod has
// its own view), or multi-node reader-only when readonly.
func Capability(mountFlags []string, readonly bool) *csi.VolumeCapability {
	mode := csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	if readonly {
		mode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	}
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{
			Mount: &csi.VolumeCapability_MountVolume{MountFlags: append([]string(nil), mountFlags...)},
		},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

// CreateVolume creates (or, the call being idempotent on name, finds) the
// volume name with a quota of quota bytes through the CSI controller.
func (d *Driver) CreateVolume(ctx context.Context, name string, quota int64) (*csi.Volume, error) {
	resp, err := d.Controller.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: quota},
		VolumeCapabilities: []*csi.VolumeCapability{Capability(nil, false)},
	})
	if err != nil {
		return nil, fmt.Errorf("CreateVolume(name=%q, required_bytes=%d): %w", name, quota, err)
	}
	if resp.GetVolume().GetVolumeId() == "" {
		return nil, fmt.Errorf("CreateVolume(name=%q): response has no volume_id: %v", name, resp)
	}
	return resp.GetVolume(), nil
}

// DeleteVolume deletes the volume through the CSI controller.
func (d *Driver) DeleteVolume(ctx context.Context, vol *csi.Volume) error {
	_, err := d.Controller.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
	if err != nil {
		return fmt.Errorf("DeleteVolume(%s): %w", vol.GetVolumeId(), err)
	}
	return nil
}

// Stage calls NodeStageVolume for vol at stagingPath (created first, as the
// kubelet does), with a mount capability carrying mountFlags. Aborted and
// Unavailable answers (a hydration still in progress, a concurrent call) are
// retried until ctx ends.
func (d *Driver) Stage(ctx context.Context, vol *csi.Volume, stagingPath string, mountFlags ...string) error {
	if err := os.MkdirAll(stagingPath, 0o750); err != nil {
		return err
	}
	req := &csi.NodeStageVolumeRequest{
		VolumeId:          vol.GetVolumeId(),
		StagingTargetPath: stagingPath,
		VolumeCapability:  Capability(mountFlags, false),
		VolumeContext:     vol.GetVolumeContext(),
	}
	err := d.retry(ctx, func(ctx context.Context) error {
		_, err := d.Node.NodeStageVolume(ctx, req)
		return err
	})
	if err != nil {
		return fmt.Errorf("NodeStageVolume(volume_id=%s, staging_target_path=%s, mount_flags=%q): %w",
			vol.GetVolumeId(), stagingPath, mountFlags, err)
	}
	return nil
}

// Unstage calls NodeUnstageVolume for vol at stagingPath.
func (d *Driver) Unstage(ctx context.Context, vol *csi.Volume, stagingPath string) error {
	req := &csi.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: stagingPath}
	err := d.retry(ctx, func(ctx context.Context) error {
		_, err := d.Node.NodeUnstageVolume(ctx, req)
		return err
	})
	if err != nil {
		return fmt.Errorf("NodeUnstageVolume(volume_id=%s, staging_target_path=%s): %w", vol.GetVolumeId(), stagingPath, err)
	}
	return nil
}

// Publish calls NodePublishVolume for vol at target (whose parent directory
// is created first, as the kubelet does; the driver creates target itself),
// with mountFlags in the capability and the readonly flag. Aborted and
// Unavailable answers are retried until ctx ends.
func (d *Driver) Publish(ctx context.Context, vol *csi.Volume, staging, target string, mountFlags []string, readonly bool) error {
	if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
		return err
	}
	req := &csi.NodePublishVolumeRequest{
		VolumeId:          vol.GetVolumeId(),
		StagingTargetPath: staging,
		TargetPath:        target,
		VolumeCapability:  Capability(mountFlags, readonly),
		Readonly:          readonly,
		VolumeContext:     vol.GetVolumeContext(),
	}
	err := d.retry(ctx, func(ctx context.Context) error {
		_, err := d.Node.NodePublishVolume(ctx, req)
		return err
	})
	if err != nil {
		return fmt.Errorf("NodePublishVolume(volume_id=%s, target_path=%s, mount_flags=%q, readonly=%v): %w",
			vol.GetVolumeId(), target, mountFlags, readonly, err)
	}
	return nil
}

// Unpublish calls NodeUnpublishVolume for vol at target: the driver unmounts
// it and moves the pod's writes into its outbox.
func (d *Driver) Unpublish(ctx context.Context, vol *csi.Volume, target string) error {
	req := &csi.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target}
	err := d.retry(ctx, func(ctx context.Context) error {
		_, err := d.Node.NodeUnpublishVolume(ctx, req)
		return err
	})
	if err != nil {
		return fmt.Errorf("NodeUnpublishVolume(volume_id=%s, target_path=%s): %w", vol.GetVolumeId(), target, err)
	}
	return nil
}

// WaitCommitted waits until the driver's outbox is empty, that is until every
// unpublished pod's writes have been committed.
func (d *Driver) WaitCommitted(ctx context.Context) error {
	err := WaitCommitted(ctx, d.StoreDir)
	if err != nil && !d.Running() {
		return fmt.Errorf("%w (driver exited: %s)", err, d.exitStatus())
	}
	return err
}

// outboxCandidates are the places a store keeps its outbox: the contract's
// <store>/outbox, and <store>/node/outbox where the node tier has a
// directory of its own.
var outboxCandidates = []string{"outbox", filepath.Join("node", "outbox")}

// OutboxDir returns the outbox directory of the store at storeDir: the
// first of <store>/outbox and <store>/node/outbox that exists, or an error
// when neither does.
func OutboxDir(storeDir string) (string, error) {
	for _, c := range outboxCandidates {
		p := filepath.Join(storeDir, c)
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("no outbox in store %s (looked for %s)", storeDir, strings.Join(outboxCandidates, ", "))
}

// WaitCommitted polls the outbox of the store at storeDir (see OutboxDir)
// every 2 ms until it has no entries or ctx ends; the error then names the
// entries still pending. A store without an outbox is an error, not an
// empty outbox: it means the wrong directory is being watched.
func WaitCommitted(ctx context.Context, storeDir string) error {
	dir, err := OutboxDir(storeDir)
	if err != nil {
		return err
	}
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		if len(ents) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			names := make([]string, 0, len(ents))
			for i, e := range ents {
				if i == 5 {
					names = append(names, "...")
					break
				}
				names = append(names, e.Name())
			}
			return fmt.Errorf("outbox %s still holds %d entries %v: %w", dir, len(ents), names, ctx.Err())
		case <-tick.C:
		}
	}
}
