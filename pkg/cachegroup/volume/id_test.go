package volume

import (
	"errors"
	"strings"
	"testing"
)

func TestIDsHaveOneStrictSyntax(t *testing.T) {
	if err := CheckVolumeID(ID("m2")); err != nil {
		t.Fatalf("the id of a volume: %v", err)
	}
	if err := CheckSnapshotID(SnapshotID("s")); err != nil {
		t.Fatalf("the id of a snapshot: %v", err)
	}
	good := ID("x")
	for _, id := range []string{"", "vol-", good + "0", good[:len(good)-1], strings.ToUpper(good), "../volumes/" + good,
		good[:10] + "/" + good[11:], good[:10] + "?" + good[11:], good[:10] + "#" + good[11:], good[:10] + "\x00" + good[11:],
		SnapshotID("x"), "snap-../../../../etc/x"} {
		if err := CheckVolumeID(id); !errors.Is(err, ErrInvalidID) {
			t.Errorf("volume id %q accepted (%v)", id, err)
		}
	}
	if err := CheckSnapshotID("../" + SnapshotID("x")); !errors.Is(err, ErrInvalidID) {
		t.Errorf("a snapshot id with a path accepted (%v)", err)
	}
	for _, name := range []string{"node-a", "ip-10-0-0-1.ec2.internal", "a"} {
		if err := CheckMemberName(name); err != nil {
			t.Errorf("member %q: %v", name, err)
		}
	}
	for _, name := range []string{"", "-a", "a-", "Mallory", "a/b", "a b", "a\x00", strings.Repeat("a", 254)} {
		if err := CheckMemberName(name); !errors.Is(err, ErrInvalidID) {
			t.Errorf("member %q accepted (%v)", name, err)
		}
	}
}

func FuzzCheckID(f *testing.F) {
	f.Add(ID("m2"))
	f.Add(SnapshotID("s"))
	f.Add("../x")
	f.Fuzz(func(t *testing.T, id string) {
		// An id that passes builds a path and a URL segment that stay one
		// plain component.
		for _, check := range []func(string) error{CheckVolumeID, CheckSnapshotID, CheckMemberName} {
			if check(id) == nil && (strings.ContainsAny(id, "/\\?#%\x00 ") || id == "." || id == ".." || len(id) > maxMemberName) {
				t.Fatalf("%q accepted", id)
			}
		}
	})
}
