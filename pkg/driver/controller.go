package driver

import (
	"context"
	"fmt"
	"strings"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"k8s.io/klog/v2"
)

// defaultQuota is the quota of a volume created with no capacity range.
const defaultQuota = 1 << 30

// maxNameLen bounds the names of volumes and snapshots: CSI asks drivers to
// take names of up to 128 bytes, and the Kubernetes sidecars make far
// shorter ones.
const maxNameLen = 128

// maxQuota bounds a volume's quota at 1 PiB. A quota reserves nothing, but
// quotas and sizes are added up as int64 bytes; a bound far above any cache
// disk keeps those sums clear of overflow and refuses a request whose unit
// is surely a mistake.
const maxQuota = 1 << 50

// checkName refuses a volume or snapshot name that is empty, too long or
// holds NUL bytes (which no Kubernetes name has, and which would end the name
// early wherever it reaches C).
func checkName(kind, name string) error {
	switch {
	case name == "":
		return status.Errorf(codes.InvalidArgument, "%s name is required", kind)
	case len(name) > maxNameLen:
		return status.Errorf(codes.InvalidArgument, "%s name is %d bytes, longer than %d bytes", kind, len(name), maxNameLen)
	case strings.ContainsRune(name, 0):
		return status.Errorf(codes.InvalidArgument, "%s name %.80q holds a NUL byte", kind, name)
	}
	return nil
}

// ControllerGetCapabilities advertises what the controller does; there is no
// attach: every node reads the group directly.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// CreateVolume creates a volume (idempotent on name): quota = the requested
// capacity; from a snapshot, an instant clone of its tree.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	spec, source, err := d.validateCreateVolume(req)
	if err != nil {
		return nil, err
	}
	id := volume.ID(spec.Name)
	if err := d.inflight.lock(id); err != nil {
		return nil, err
	}
	defer d.inflight.unlock(id)

	v, err := d.group.CreateVolume(ctx, spec, source)
	if err != nil {
		return nil, errStatus(err, "create volume %q", spec.Name)
	}
	vol := &csi.Volume{VolumeId: v.ID, CapacityBytes: v.Quota, ContentSource: req.GetVolumeContentSource()}
	return &csi.CreateVolumeResponse{Volume: vol}, nil
}

func (d *Driver) validateCreateVolume(req *csi.CreateVolumeRequest) (spec volume.Spec, source string, err error) {
	if err := checkName("volume", req.GetName()); err != nil {
		return spec, "", err
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return spec, "", err
	}
	spec.Name = req.GetName()
	quota, err := quotaOf(req.GetCapacityRange())
	if err != nil {
		return spec, "", err
	}
	spec.Quota = quota
	for k, v := range req.GetParameters() {
		switch {
		case k == "owner":
			if spec.FileOwner, err = ParseOwner(v); err != nil {
				return spec, "", status.Errorf(codes.InvalidArgument, "parameter owner=%s: %v", v, err)
			}
		case fromKubernetes(k):
			// Added by the external provisioner (PVC name, namespace).
		default:
			return spec, "", status.Errorf(codes.InvalidArgument, "unknown StorageClass parameter %q (known: owner)", k)
		}
	}
	if src := req.GetVolumeContentSource(); src != nil {
		snap := src.GetSnapshot()
		if snap == nil {
			return spec, "", status.Error(codes.InvalidArgument, "volume content source: only snapshots can be cloned")
		}
		if snap.GetSnapshotId() == "" {
			return spec, "", status.Error(codes.InvalidArgument, "volume content source: snapshot id is required")
		}
		if err := volume.CheckSnapshotID(snap.GetSnapshotId()); err != nil {
			return spec, "", status.Errorf(codes.NotFound, "volume content source: %v: no such snapshot", err)
		}
		source = snap.GetSnapshotId()
	}
	return spec, source, nil
}

// quotaOf picks a volume's quota from a capacity range.
func quotaOf(r *csi.CapacityRange) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Error(codes.InvalidArgument, "capacity range: negative bytes")
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.InvalidArgument, "capacity range: required %d > limit %d", req, lim)
	}
	if req > maxQuota {
		return 0, status.Errorf(codes.InvalidArgument, "capacity range: required %d bytes is over the %d bytes (1 PiB) a volume may have", req, int64(maxQuota))
	}
	switch {
	case req > 0:
		return req, nil
	case lim > 0:
		return min(lim, defaultQuota), nil
	}
	return defaultQuota, nil
}

// validateCapabilities accepts mount volumes in any access mode: each pod has
// its own view, so every multi-node mode is safe. Block volumes are refused.
func validateCapabilities(caps []*csi.VolumeCapability) error {
	if len(caps) == 0 {
		return status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	for _, c := range caps {
		if _, err := mountOptions(c, nil); err != nil {
			return err
		}
	}
	return nil
}

// mountOptions checks capability c and parses its mount flags together with
// the volume attributes attrs, once per request.
func mountOptions(c *csi.VolumeCapability, attrs map[string]string) (Options, error) {
	if err := checkCapability(c); err != nil {
		return Options{}, err
	}
	o, err := ParseOptions(c.GetMount().GetMountFlags(), attrs)
	if err != nil {
		return Options{}, status.Errorf(codes.InvalidArgument, "volume capability: %v", err)
	}
	return o, nil
}

// checkCapability accepts a mount volume with an access mode.
func checkCapability(c *csi.VolumeCapability) error {
	if c == nil {
		return status.Error(codes.InvalidArgument, "volume capability is required")
	}
	if c.GetAccessMode() == nil || c.GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_UNKNOWN {
		return status.Error(codes.InvalidArgument, "volume capability: access mode is required")
	}
	if c.GetBlock() != nil {
		return status.Error(codes.InvalidArgument, "volume capability: block volumes are not supported, only mount")
	}
	m := c.GetMount()
	if m == nil {
		return status.Error(codes.InvalidArgument, "volume capability: access type mount is required")
	}
	if m.GetFsType() != "" && m.GetFsType() != "overlay" {
		return status.Errorf(codes.InvalidArgument, "volume capability: fs type %q is not supported (the volume is an overlay)", m.GetFsType())
	}
	return nil
}

// DeleteVolume drops a volume's head; a missing volume is not an error, nor
// is an id that no volume can have.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if err := volume.CheckVolumeID(id); err != nil {
		klog.V(2).InfoS("Delete of an id no volume can have: nothing to delete", "err", err)
		return &csi.DeleteVolumeResponse{}, nil
	}
	if err := d.inflight.lock(id); err != nil {
		return nil, err
	}
	defer d.inflight.unlock(id)
	if err := d.group.DeleteVolume(ctx, id); err != nil {
		return nil, errStatus(err, "delete volume %s", id)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms mount capabilities of an existing volume.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume capabilities are required")
	}
	if err := volume.CheckVolumeID(id); err != nil {
		return nil, notFound(err)
	}
	if _, err := d.group.Volume(ctx, id); err != nil {
		return nil, errStatus(err, "volume %s", id)
	}
	if err := validateCapabilities(req.GetVolumeCapabilities()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	for k := range req.GetParameters() {
		if k != "owner" && !fromKubernetes(k) {
			return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("unknown parameter %q", k)}, nil
		}
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// page returns the items after the starting token (the last ID of the
// previous page), at most max of them, and the next token. Tokens are IDs, so
// a page stays right when items are added or deleted between calls.
func page[T any](items []T, id func(T) string, token string, max int32, valid func(string) error) ([]T, string, error) {
	if max < 0 {
		return nil, "", status.Error(codes.InvalidArgument, "max_entries is negative")
	}
	if token != "" {
		if valid(token) != nil {
			return nil, "", status.Errorf(codes.Aborted, "starting token %q is not one this driver returned", token)
		}
		i := 0
		for i < len(items) && id(items[i]) <= token {
			i++
		}
		items = items[i:]
	}
	if max == 0 || int(max) >= len(items) {
		return items, "", nil
	}
	return items[:max], id(items[max-1]), nil
}

// ListVolumes lists the group's volumes, paginated.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	vs, err := d.group.Volumes(ctx)
	if err != nil {
		return nil, errStatus(err, "list volumes")
	}
	vs, next, err := page(vs, func(v volume.Volume) string { return v.ID }, req.GetStartingToken(), req.GetMaxEntries(), volume.CheckVolumeID)
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vs {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: &csi.Volume{VolumeId: v.ID, CapacityBytes: v.Quota}})
	}
	return resp, nil
}

// GetCapacity returns how many more bytes of data the group may take, in
// every mode: the controller holds no data, so it asks the members.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if caps := req.GetVolumeCapabilities(); len(caps) > 0 {
		if err := validateCapabilities(caps); err != nil {
			return &csi.GetCapacityResponse{}, nil // nothing of an unsupported kind fits
		}
	}
	return &csi.GetCapacityResponse{AvailableCapacity: d.group.Capacity(ctx)}, nil
}

// ControllerExpandVolume raises a volume's quota; nothing on the node changes.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity range is required")
	}
	quota, err := quotaOf(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	if err := volume.CheckVolumeID(id); err != nil {
		return nil, notFound(err)
	}
	if err := d.inflight.lock(id); err != nil {
		return nil, err
	}
	defer d.inflight.unlock(id)
	v, err := d.group.ExpandVolume(ctx, id, quota)
	if err != nil {
		return nil, errStatus(err, "expand volume %s", id)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.Quota, NodeExpansionRequired: false}, nil
}

// CreateSnapshot pins the volume's current generation (idempotent on name).
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := checkName("snapshot", req.GetName()); err != nil {
		return nil, err
	}
	src := req.GetSourceVolumeId()
	if src == "" {
		return nil, status.Error(codes.InvalidArgument, "source volume id is required")
	}
	for k := range req.GetParameters() {
		if !fromKubernetes(k) {
			return nil, status.Errorf(codes.InvalidArgument, "unknown VolumeSnapshotClass parameter %q", k)
		}
	}
	if err := volume.CheckVolumeID(src); err != nil {
		return nil, status.Errorf(codes.NotFound, "snapshot source: %v: no such volume", err)
	}
	id := volume.SnapshotID(req.GetName())
	if err := d.inflight.lock(id); err != nil {
		return nil, err
	}
	defer d.inflight.unlock(id)
	if _, err := d.group.Volume(ctx, src); err != nil {
		return nil, errStatus(err, "snapshot source volume %s", src)
	}
	s, err := d.group.CreateSnapshot(ctx, req.GetName(), src)
	if err != nil {
		return nil, errStatus(err, "create snapshot %q", req.GetName())
	}
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(s)}, nil
}

func csiSnapshot(s volume.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{SnapshotId: s.ID, SourceVolumeId: s.VolumeID, SizeBytes: s.Size,
		CreationTime: timestamppb.New(s.Created), ReadyToUse: true}
}

// DeleteSnapshot unpins a snapshot; a missing snapshot is not an error, nor
// is an id that no snapshot can have.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot id is required")
	}
	if err := volume.CheckSnapshotID(id); err != nil {
		klog.V(2).InfoS("Delete of an id no snapshot can have: nothing to delete", "err", err)
		return &csi.DeleteSnapshotResponse{}, nil
	}
	if err := d.inflight.lock(id); err != nil {
		return nil, err
	}
	defer d.inflight.unlock(id)
	if err := d.group.DeleteSnapshot(ctx, id); err != nil {
		return nil, errStatus(err, "delete snapshot %s", id)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists snapshots, by ID or source volume if asked, paginated.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	ss, err := d.group.Snapshots(ctx)
	if err != nil {
		return nil, errStatus(err, "list snapshots")
	}
	var match []volume.Snapshot
	for _, s := range ss {
		if (req.GetSnapshotId() == "" || s.ID == req.GetSnapshotId()) &&
			(req.GetSourceVolumeId() == "" || s.VolumeID == req.GetSourceVolumeId()) {
			match = append(match, s)
		}
	}
	match, next, err := page(match, func(s volume.Snapshot) string { return s.ID }, req.GetStartingToken(), req.GetMaxEntries(), volume.CheckSnapshotID)
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range match {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(s)})
	}
	return resp, nil
}

// volumeName is the scoped name of an inline volume.
func inlineVolumeName(namespace, name string) string {
	return fmt.Sprintf("inline/%s/%s", namespace, name)
}
