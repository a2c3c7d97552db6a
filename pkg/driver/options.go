package driver

import (
	"fmt"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// Options are a mount's settings, from the volume capability's mount flags
// (StorageClass or PV mountOptions) and from volume attributes (inline
// volumes). See the table in the README.
type Options struct {
	// Group is the cache group that serves the volume; "" means the driver's own.
	Group string
	// NoSharing keeps this node's copies from being offered to peers.
	NoSharing bool
	// Commit publishes the pod's writes when it ends (commit=on-unmount).
	Commit bool
	// FileOwner normalises committed files to this uid:gid (owner=UID:GID).
	FileOwner *volume.FileOwner
	// ReadOnly gives the pod no write access at all.
	ReadOnly bool
}

// Attribute keys an inline ephemeral volume may carry besides the options.
const (
	attrVolume    = "volume" // the cache's name, scoped by the pod's namespace
	attrSize      = "size"   // its quota for a first use, e.g. 10Gi
	attrEphemeral = "csi.storage.k8s.io/ephemeral"
	attrNamespace = "csi.storage.k8s.io/pod.namespace"
	attrPodName   = "csi.storage.k8s.io/pod.name"
)

// ParseOptions parses mount flags (each may hold several comma-separated
// options) and then volume attributes. Attributes the kubelet adds and the
// inline-volume keys are skipped; anything else unknown or malformed is an
// error that names it.
func ParseOptions(flags []string, attrs map[string]string) (Options, error) {
	o := Options{Commit: true}
	for _, f := range flags {
		for opt := range strings.SplitSeq(f, ",") {
			opt = strings.TrimSpace(opt)
			if opt == "" {
				continue
			}
			key, val, hasVal := strings.Cut(opt, "=")
			if err := o.set(key, val, hasVal, false); err != nil {
				return Options{}, err
			}
		}
	}
	for key, val := range attrs {
		if fromKubernetes(key) || key == attrVolume || key == attrSize {
			continue
		}
		if err := o.set(key, val, true, true); err != nil {
			return Options{}, err
		}
	}
	return o, nil
}

// fromKubernetes reports whether a parameter or attribute key is one that
// Kubernetes components add on their own: the kubelet's pod info and the
// external sidecars' metadata (csi.storage.k8s.io/...), and the identity
// csi-provisioner records in every PV (storage.kubernetes.io/...). Such keys
// are never options and never errors.
func fromKubernetes(key string) bool {
	return strings.HasPrefix(key, "csi.storage.k8s.io/") || strings.HasPrefix(key, "storage.kubernetes.io/")
}

// set applies one option. Boolean options given as attributes take "true" or
// "false"; as mount flags they take no value.
func (o *Options) set(key, val string, hasVal, attr bool) error {
	boolean := func(dst *bool) error {
		switch {
		case !hasVal:
			*dst = true
		case attr:
			b, err := strconv.ParseBool(val)
			if err != nil {
				return fmt.Errorf("option %q: value %q is not true or false", key, val)
			}
			*dst = b
		default:
			return fmt.Errorf("option %q takes no value", key+"="+val)
		}
		return nil
	}
	switch key {
	case "cache-group":
		if !hasVal || val == "" {
			return fmt.Errorf("option %q needs a group name: cache-group=NAME", key)
		}
		if err := validGroupName(val); err != nil {
			return fmt.Errorf("option cache-group=%s: %w", val, err)
		}
		o.Group = val
	case "no-sharing":
		return boolean(&o.NoSharing)
	case "readonly":
		return boolean(&o.ReadOnly)
	case "commit":
		switch val {
		case "on-unmount":
			o.Commit = true
		case "never":
			o.Commit = false
		default:
			return fmt.Errorf("option commit=%s: want commit=on-unmount or commit=never", val)
		}
	case "owner":
		ow, err := ParseOwner(val)
		if err != nil {
			return fmt.Errorf("option owner=%s: %w", val, err)
		}
		o.FileOwner = ow
	default:
		if attr {
			return fmt.Errorf("unknown volume attribute %q", key)
		}
		return fmt.Errorf("unknown mount option %q", key)
	}
	return nil
}

// ParseOwner parses "UID:GID" (decimal).
func ParseOwner(s string) (*volume.FileOwner, error) {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		return nil, fmt.Errorf("want UID:GID")
	}
	uid, err := strconv.ParseUint(u, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid %q is not a number", u)
	}
	gid, err := strconv.ParseUint(g, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid %q is not a number", g)
	}
	if uid == 1<<32-1 || gid == 1<<32-1 {
		return nil, fmt.Errorf("uid and gid 4294967295 are reserved")
	}
	return &volume.FileOwner{UID: uint32(uid), GID: uint32(gid)}, nil
}

// validGroupName accepts DNS-label-like names.
func validGroupName(s string) error {
	if len(s) > 63 {
		return fmt.Errorf("group name longer than 63 characters")
	}
	for i, c := range s {
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return fmt.Errorf("group name must be lower-case letters, digits and inner '-'")
		}
	}
	return nil
}

// maxSizeQuantity bounds a size well inside int64 (4 EiB), so that sums of
// sizes do not overflow.
var maxSizeQuantity = *resource.NewQuantity(1<<62, resource.BinarySI)

// ParseSize parses a byte count written as a Kubernetes quantity (100Gi, 1.5Gi,
// 2M, 512, 1e9): the same syntax as a claim's storage request. It must be a
// whole, non-negative number of bytes.
func ParseSize(s string) (int64, error) {
	// ParseQuantity takes a bare suffix ("Gi") as zero: a size starts with a digit.
	if s == "" || (s[0] < '0' || s[0] > '9') && s[0] != '.' {
		return 0, fmt.Errorf("size %q: want a number of bytes, e.g. 10Gi or 1.5Gi", s)
	}
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	if q.Cmp(maxSizeQuantity) > 0 {
		return 0, fmt.Errorf("size %q is over the 4 EiB a size may be", s)
	}
	v := q.Value() // rounded up to a whole byte
	if q.Cmp(*resource.NewQuantity(v, q.Format)) != 0 {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	return v, nil
}
