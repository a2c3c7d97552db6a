package volume

import (
	"fmt"
	"strings"
)

// The ids of volumes and snapshots are a prefix and the first 12 bytes of
// the SHA-256 of their name in lower-case hex (see ID and SnapshotID): one
// strict syntax, checked before any path or URL is built from an id.
const (
	volumePrefix   = "vol-"
	snapshotPrefix = "snap-"
	idHexLen       = 24
)

// CheckVolumeID reports why id cannot be a volume's id, or nil.
func CheckVolumeID(id string) error { return checkID("volume", volumePrefix, id) }

// CheckSnapshotID reports why id cannot be a snapshot's id, or nil.
func CheckSnapshotID(id string) error { return checkID("snapshot", snapshotPrefix, id) }

func checkID(kind, prefix, id string) error {
	hex, ok := strings.CutPrefix(id, prefix)
	if !ok || len(hex) != idHexLen || strings.Trim(hex, "0123456789abcdef") != "" {
		return fmt.Errorf("%w: %s id %.80q is not %q and %d lower-case hex digits", ErrInvalidID, kind, id, prefix, idHexLen)
	}
	return nil
}

// maxMemberName is the longest member name: a Kubernetes node name is a DNS
// subdomain.
const maxMemberName = 253

// CheckMemberName reports why name cannot be a member's name (a node name:
// lower-case letters, digits, '-' and '.', starting and ending with a letter
// or digit, at most 253 bytes), or nil.
func CheckMemberName(name string) error {
	bad := name == "" || len(name) > maxMemberName
	for i := 0; !bad && i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		bad = !alnum && (c != '-' && c != '.' || i == 0 || i == len(name)-1)
	}
	if bad {
		return fmt.Errorf("%w: member name %.80q is not a node name (lower-case letters, digits, inner '-' and '.', at most %d bytes)",
			ErrInvalidID, name, maxMemberName)
	}
	return nil
}
