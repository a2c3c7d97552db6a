package driver

import (
	"strings"
	"testing"
)

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions([]string{"cache-group=ci", "no-sharing", "commit=never,owner=1000:1000"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.Group != "ci" || !o.NoSharing || o.Commit || o.FileOwner == nil || o.FileOwner.UID != 1000 || o.FileOwner.GID != 1000 || o.ReadOnly {
		t.Fatalf("parsed %+v", o)
	}
	o, err = ParseOptions(nil, map[string]string{"readonly": "true", "no-sharing": "false", "volume": "m2",
		"csi.storage.k8s.io/pod.namespace": "ci"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.ReadOnly || o.NoSharing || !o.Commit {
		t.Fatalf("parsed attributes %+v", o)
	}
}

// csi-provisioner puts its identity into every PV's volume attributes; a
// mount of such a PV must not be refused for it.
func TestParseOptionsSkipsProvisionerAttributes(t *testing.T) {
	o, err := ParseOptions([]string{"cache-group=ci", "no-sharing"},
		map[string]string{"storage.kubernetes.io/csiProvisionerIdentity": "1700000000000-1234-cachegroup.csi.dev"})
	if err != nil {
		t.Fatal(err)
	}
	if o.Group != "ci" || !o.NoSharing {
		t.Fatalf("parsed %+v", o)
	}
}

func TestParseOptionsErrorsNameTheOption(t *testing.T) {
	cases := map[string][]string{
		"cache-grup":       {"cache-grup=ci"},
		"cache-group":      {"cache-group"},
		"cache-group=Bad_": {"cache-group=Bad_"},
		"commit=sometimes": {"commit=sometimes"},
		"owner=root":       {"owner=root"},
		"owner=1:x":        {"owner=1:x"},
		"no-sharing=yes":   {"no-sharing=yes"},
	}
	for want, flags := range cases {
		_, err := ParseOptions(flags, nil)
		if err == nil {
			t.Errorf("%v: no error", flags)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%v: error %q does not name %q", flags, err, want)
		}
	}
	if _, err := ParseOptions(nil, map[string]string{"bogus": "1"}); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown attribute: %v", err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "10Gi": 10 << 30, "2M": 2e6, "1Ti": 1 << 40,
		"1.5Gi": 3 << 29, "0.5Ki": 512, "1e3": 1000, "2G": 2e9, "4096k": 4096e3} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "-1Gi", "1.5", "100m", "Gi", "ten", "99999999999Ti", "8Ei", "1 Gi"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q): no error", bad)
		}
	}
}

// FuzzParseOptions checks that parsing never panics and that what it
// accepts is well-formed.
func FuzzParseOptions(f *testing.F) {
	f.Add("cache-group=ci,no-sharing", "owner", "1000:1000")
	f.Add("commit=never", "readonly", "true")
	f.Add(",,=,", "=", "")
	f.Fuzz(func(t *testing.T, flags, key, val string) {
		o, err := ParseOptions([]string{flags}, map[string]string{key: val})
		if err != nil {
			return
		}
		if o.Group != "" && validGroupName(o.Group) != nil {
			t.Fatalf("accepted group %q", o.Group)
		}
		if o.FileOwner != nil && (o.FileOwner.UID == 1<<32-1 || o.FileOwner.GID == 1<<32-1) {
			t.Fatalf("accepted reserved owner %+v", o.FileOwner)
		}
	})
}

func TestFromKubernetes(t *testing.T) {
	for key, want := range map[string]bool{
		"csi.storage.k8s.io/pvc/name":                  true,
		"csi.storage.k8s.io/pod.namespace":             true,
		"storage.kubernetes.io/csiProvisionerIdentity": true,
		"owner":                 false,
		"no-sharing":            false,
		"storage.kubernetes.io": false, // no key below the prefix
	} {
		if got := fromKubernetes(key); got != want {
			t.Errorf("fromKubernetes(%q) = %v, want %v", key, got, want)
		}
	}
}
