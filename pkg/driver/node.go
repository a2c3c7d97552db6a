package driver

import (
	"errors"
	"fmt"
	"time"

	"context"
	"io/fs"
	"path/filepath"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// NodeGetCapabilities advertises staging and volume stats.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo returns the node's identity; volumes are not topology bound.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.cfg.Member.NodeID}, nil
}

// checkGroup refuses a mount that names a group this node does not serve.
func (d *Driver) checkGroup(o Options) error {
	if o.Group != "" && o.Group != d.cfg.Member.Group {
		return status.Errorf(codes.InvalidArgument, "option cache-group=%s: this node serves cache group %q", o.Group, d.cfg.Member.Group)
	}
	return nil
}

// notFound is the answer to an id that cannot be a volume's: no such volume
// exists, and nothing is looked up or built from it.
func notFound(err error) error { return status.Errorf(codes.NotFound, "%v: no such volume", err) }

// NodeStageVolume materialises the volume's current snapshot on this node
// (a thin layer over the previous generation if the node has it), so that
// publishing it is only a mount. A hydration that outlives the call goes
// on; the retried call picks it up.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if err := checkPath("staging target path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	opts, err := mountOptions(req.GetVolumeCapability(), req.GetVolumeContext())
	if err != nil {
		return nil, err
	}
	if err := d.checkGroup(opts); err != nil {
		return nil, err
	}
	if err := volume.CheckVolumeID(id); err != nil {
		return nil, notFound(err)
	}
	if err := d.inflight.lock(id); err != nil {
		return nil, err
	}
	defer d.inflight.unlock(id)
	v, err := d.group.Volume(ctx, id)
	if err != nil {
		return nil, errStatus(err, "stage volume %s", id)
	}
	_, release, err := d.node.Stack(ctx, v.Root, node.Want{VolumeID: id, Sharing: !opts.NoSharing})
	if err != nil {
		return nil, snapshotStatus(err, "stage volume %s: snapshot %s", id, v.Root)
	}
	release() // kept from here on as the newest of a staged volume
	if err := d.node.MarkStaged(id, true); err != nil {
		return nil, status.Errorf(codes.Internal, "stage volume %s: %v", id, err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// NodeUnstageVolume lets go of the volume on this node; snapshots no pod
// mounts are pruned.
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if err := checkPath("staging target path", req.GetStagingTargetPath()); err != nil {
		return nil, err
	}
	if err := volume.CheckVolumeID(id); err != nil {
		return nil, notFound(err)
	}
	if err := d.inflight.lock(id); err != nil {
		return nil, err
	}
	defer d.inflight.unlock(id)
	if err := d.node.MarkStaged(id, false); err != nil {
		return nil, status.Errorf(codes.Internal, "unstage volume %s: %v", id, err)
	}
	// Keep the newest snapshot of every volume still staged here.
	var keep []cas.Digest
	for _, other := range d.node.Staged() {
		if v, err := d.group.Volume(ctx, other); err == nil {
			keep = append(keep, v.Root)
		}
	}
	if err := d.node.Prune(keep...); err != nil {
		klog.ErrorS(err, "Prune snapshots", "volume", id)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// publishRequest is a NodePublishVolume request whose arguments are checked.
type publishRequest struct {
	id, target          string // id: the volume's, or the kubelet's handle of an inline volume
	attrs               map[string]string
	opts                Options
	ephemeral, readOnly bool
}

// podOf returns "namespace/name" of the pod a publish is for, from the
// attributes the kubelet adds with podInfoOnMount, or "".
func podOf(attrs map[string]string) string {
	ns, name := attrs[attrNamespace], attrs[attrPodName]
	if ns == "" || name == "" {
		return ""
	}
	return ns + "/" + name
}

// checkPublish checks a publish request before anything is done with it.
func (d *Driver) checkPublish(req *csi.NodePublishVolumeRequest) (publishRequest, error) {
	p := publishRequest{id: req.GetVolumeId(), target: req.GetTargetPath(), attrs: req.GetVolumeContext()}
	if p.id == "" {
		return p, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if err := checkPath("target path", p.target); err != nil {
		return p, err
	}
	var err error
	if p.opts, err = mountOptions(req.GetVolumeCapability(), p.attrs); err != nil {
		return p, err
	}
	if err := d.checkGroup(p.opts); err != nil {
		return p, err
	}
	p.ephemeral = p.attrs[attrEphemeral] == "true"
	if !p.ephemeral {
		if err := checkPath("staging target path", req.GetStagingTargetPath()); err != nil {
			return p, err
		}
		// An inline volume's id is the kubelet's handle, not one of ours:
		// only the others are volume ids.
		if err := volume.CheckVolumeID(p.id); err != nil {
			return p, notFound(err)
		}
	}
	mode := req.GetVolumeCapability().GetAccessMode().GetMode()
	p.readOnly = req.GetReadonly() || p.opts.ReadOnly ||
		mode == csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY ||
		mode == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	return p, nil
}

// lockTarget takes the in-flight lock of target: two publishes or
// unpublishes (of any volumes) to one target never interleave, and only
// they are Aborted (the CO retries later). Calls for other targets of the
// same volume go on side by side: pods of one volume never wait on each
// other, and a publish that finds the volume's snapshot being staged or
// built joins that build (the node tier single-flights it). Stage and
// unstage lock the volume; the node tier keeps a snapshot a publish is
// mounting from pruning by an unstage running meanwhile (Node.Stack).
func (d *Driver) lockTarget(target string) (unlock func(), err error) {
	if err := d.targets.lock(target); err != nil {
		return nil, err
	}
	return func() { d.targets.unlock(target) }, nil
}

// NodePublishVolume mounts the volume's newest snapshot at the target: its
// layers (a flat snapshot, or thin layers over one: Node.Stack) under a
// private upper layer, or for a read-only publish the same layers read-only
// (a bind of a flat snapshot). The head is looked up again, so a pod
// started later sees every commit made before it started.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	p, err := d.checkPublish(req)
	if err != nil {
		return nil, err
	}
	target := p.target
	unlock, err := d.lockTarget(target)
	if err != nil {
		return nil, err
	}
	defer unlock()

	volID := p.id
	if p.ephemeral {
		if volID, err = d.ensureInline(ctx, p.attrs); err != nil {
			return nil, err
		}
	}
	// Nothing is read or mounted through a link: the mount check below
	// would follow one.
	if _, err := checkNoSymlinks("target path", target); err != nil {
		return nil, err
	}
	// Idempotency: the same volume already mounted here is success.
	if l, ok, err := d.node.Layer(target); err != nil {
		return nil, status.Errorf(codes.Internal, "read layer of %s: %v", target, err)
	} else if ok {
		if mounted, _ := d.mount.IsMountPoint(target); mounted {
			if l.VolumeID != volID || l.ReadOnly != p.readOnly {
				return nil, status.Errorf(codes.AlreadyExists, "target %s already has volume %s mounted with other settings", target, l.VolumeID)
			}
			return &csi.NodePublishVolumeResponse{}, nil
		}
	}
	start := time.Now()
	v, err := d.group.Volume(ctx, volID)
	if err != nil {
		return nil, errStatus(err, "publish volume %s", volID)
	}
	looked := time.Now()
	lowers, release, err := d.node.Stack(ctx, v.Root, node.Want{VolumeID: volID, Sharing: !p.opts.NoSharing})
	if err != nil {
		return nil, snapshotStatus(err, "publish volume %s: snapshot %s", volID, v.Root)
	}
	defer release() // after the layer records v.Root, or the mount failed
	owner := p.opts.FileOwner
	if owner == nil {
		owner = v.FileOwner
	}
	layer := node.Layer{VolumeID: volID, Handle: p.id, Target: target, Base: v.Root, ReadOnly: p.readOnly, Quota: v.Quota,
		Commit: p.opts.Commit && !p.readOnly, FileOwner: owner, Sharing: !p.opts.NoSharing, Pod: podOf(p.attrs)}
	stacked := time.Now()
	upper, work, err := d.node.NewLayer(layer)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "publish volume %s: %v", volID, err)
	}
	layered := time.Now()
	if err := makeTarget(target); err != nil {
		d.node.Drop(target)
		return nil, err
	}
	if p.readOnly {
		upper, work = "", "" // the same layers, read-only
	}
	if err := d.mount.Stack(target, lowers, upper, work); err != nil {
		d.node.Drop(target)
		return nil, status.Errorf(codes.Internal, "mount volume %s at %s: %v", volID, target, err)
	}
	// Where a slow start went: the head's lookup, the snapshot, the pod's
	// layer (its disk), the mounts.
	klog.V(2).InfoS("Published", "volume", volID, "target", target, "snapshot", v.Root, "layers", len(lowers), "generation", v.Generation, "readOnly", p.readOnly,
		"head", looked.Sub(start), "stack", stacked.Sub(looked), "layer", layered.Sub(stacked), "mount", time.Since(layered))
	return &csi.NodePublishVolumeResponse{}, nil
}

// ensureInline creates, on first use, the inline volume the attributes name,
// scoped by the pod's namespace so a pod cannot name another namespace's cache.
func (d *Driver) ensureInline(ctx context.Context, attrs map[string]string) (string, error) {
	name, ns := attrs[attrVolume], attrs[attrNamespace]
	if name == "" {
		return "", status.Errorf(codes.InvalidArgument, "inline volume: attribute %q (the cache's name) is required", attrVolume)
	}
	if err := tree.ValidName(name); err != nil {
		return "", status.Errorf(codes.InvalidArgument, "inline volume: attribute %s: %v", attrVolume, err)
	}
	if ns == "" {
		return "", status.Errorf(codes.InvalidArgument, "inline volume: attribute %q is missing: set podInfoOnMount in the CSIDriver", attrNamespace)
	}
	quota := d.cfg.DefaultQuota
	if s := attrs[attrSize]; s != "" {
		q, err := ParseSize(s)
		if err != nil {
			return "", status.Errorf(codes.InvalidArgument, "inline volume: attribute size: %v", err)
		}
		if q > maxQuota {
			return "", status.Errorf(codes.InvalidArgument, "inline volume: attribute size %s is over the 1 PiB a volume may have", s)
		}
		quota = q
	}
	full := inlineVolumeName(ns, name)
	id := volume.ID(full)
	if v, err := d.group.Volume(ctx, id); err == nil {
		return v.ID, nil // exists: its quota is whatever it was created with
	}
	v, err := d.group.CreateVolume(ctx, volume.Spec{Name: full, Quota: quota}, "")
	if err != nil {
		return "", errStatus(err, "inline volume %s", full)
	}
	return v.ID, nil
}

// NodeUnpublishVolume unmounts the target and moves the pod's writes into the
// durable outbox; the committer publishes them to the group afterwards. The
// id may be the kubelet's handle of an inline volume: the call acts on the
// layer recorded for the target, never on anything the id names.
func (d *Driver) NodeUnpublishVolume(_ context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if err := checkPath("target path", target); err != nil {
		return nil, err
	}
	unlock, err := d.lockTarget(target)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Unmount goes by path after this check, with the race makeTarget
	// tells of; the removal below goes through the parent opened safely.
	exists, err := checkNoSymlinks("target path", target)
	if err != nil {
		return nil, err // the driver never mounted there: the layer stays
	}
	if exists {
		if err := d.mount.Unmount(target); err != nil {
			return nil, status.Errorf(codes.Internal, "unmount %s: %v; the pod's writes stay in place", target, err)
		}
		// The live upper layer must never move while a mount still writes
		// to it: a mount stacked on the target survives one unmount.
		if mounted, err := d.mount.IsMountPoint(target); err != nil || mounted {
			return nil, status.Errorf(codes.Internal, "%s is still mounted after unmount (%v); the pod's writes stay in place", target, err)
		}
	}
	if err := d.node.Submit(target); err != nil {
		return nil, status.Errorf(codes.Internal, "keep the writes of %s: %v", target, err)
	}
	if err := removeTarget(target); err != nil {
		return nil, err
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats reports the volume's bytes and entries against its
// quota, for a path the volume is published at on this node only.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if path == "" {
		return nil, status.Error(codes.InvalidArgument, "volume path is required")
	}
	l, err := d.publishedAt(id, path)
	if err != nil {
		return nil, err
	}
	v, err := d.group.Volume(ctx, l.VolumeID)
	if err != nil {
		return nil, errStatus(err, "volume %s", id)
	}
	used, upperFiles := v.Size, int64(0)
	if !l.ReadOnly {
		b, n := duDir(d.node.UpperDir(path))
		used += b
		upperFiles = n
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		{Unit: csi.VolumeUsage_BYTES, Total: v.Quota, Used: used, Available: max(v.Quota-used, 0)},
		{Unit: csi.VolumeUsage_INODES, Used: v.Count + upperFiles},
	}}, nil
}

// publishedAt returns the layer of volume id (its id, or the kubelet's
// handle of an inline volume) mounted at path, or NotFound: a path that is
// no published target of that volume has no figures to give.
func (d *Driver) publishedAt(id, path string) (node.Layer, error) {
	notHere := status.Errorf(codes.NotFound, "volume %.80q is not published at %.200q", id, path)
	if !cleanPath(path) {
		return node.Layer{}, notHere // the driver publishes at no other
	}
	l, ok, err := d.node.Layer(path)
	if err != nil {
		return l, status.Errorf(codes.Internal, "read layer of %s: %v", path, err)
	}
	if !ok || l.VolumeID != id && l.Handle != id {
		return l, notHere
	}
	if exists, err := checkNoSymlinks("volume path", path); err != nil || !exists {
		return l, notHere
	}
	if mounted, _ := d.mount.IsMountPoint(path); !mounted {
		return l, notHere
	}
	if err := volume.CheckVolumeID(l.VolumeID); err != nil {
		return l, notFound(err)
	}
	return l, nil
}

// duDir returns the bytes and entries below dir.
func duDir(dir string) (int64, int64) {
	var b, n int64
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		n++
		if e.Type().IsRegular() {
			if fi, err := e.Info(); err == nil {
				b += fi.Size()
			}
		}
		return nil
	})
	return b, n
}

// snapshotStatus is errStatus for building a volume's snapshot on this node.
// A blob of it that no member has is not a volume that does not exist: the
// head moved on while the snapshot was built, and a store short of room
// collected the old head's garbage at once; a retry builds the new head.
func snapshotStatus(err error, format string, args ...any) error {
	if errors.Is(err, cachegroup.ErrNotFound) && !errors.Is(err, cachegroup.ErrNoSpace) {
		return status.Errorf(codes.Unavailable, "%s: %v (a retry takes the volume's newest head)", fmt.Sprintf(format, args...), err)
	}
	return errStatus(err, format, args...)
}
