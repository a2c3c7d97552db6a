package driver

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// The Events of lost writes go to the claim bound to the volume's PV and to
// the pod, with a bounded message; an inline volume's go to the pod only.
// (test/e2e-k8s shows the same against a real API server and kubelet.)
func TestLostWritesAreToldToTheClaimAndThePod(t *testing.T) {
	m, err := cachegroup.Open(cachegroup.Config{NodeID: "n1", Dir: filepath.Join(t.TempDir(), "store"), NoNodeTier: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	pvVol, err := m.Group().CreateVolume(ctx, volume.Spec{Name: "pvc-1234", Quota: 1}, "")
	if err != nil {
		t.Fatal(err)
	}
	inline, err := m.Group().CreateVolume(ctx, volume.Spec{Name: inlineVolumeName("ci", "gomod"), Quota: 1}, "")
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewSimpleClientset(&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-1234"},
		Spec: corev1.PersistentVolumeSpec{ClaimRef: &corev1.ObjectReference{Namespace: "ci", Name: "maven-cache", UID: "u-1"}}})
	rec := &recorder{}
	e := &events{client: client, recorder: rec, group: m.Group()}

	e.lost(node.Layer{VolumeID: pvVol.ID, Pod: "ci/build-1"}, errors.New(strings.Repeat("why ", 1000)))
	if len(rec.got) != 2 {
		t.Fatalf("%d events, want one on the claim and one on the pod", len(rec.got))
	}
	for i, want := range []string{"PersistentVolumeClaim ci/maven-cache", "Pod ci/build-1"} {
		got := rec.got[i]
		if on := got.ref.Kind + " " + got.ref.Namespace + "/" + got.ref.Name; on != want {
			t.Errorf("event %d on %s, want %s", i, on, want)
		}
		if got.kind != corev1.EventTypeWarning || got.reason != reasonNotCommitted || !strings.Contains(got.message, pvVol.ID) || len(got.message) > 1100 {
			t.Errorf("event %d: %s %s %.120q (%d bytes), want a bounded warning about %s", i, got.kind, got.reason, got.message, len(got.message), pvVol.ID)
		}
	}
	rec.got = nil
	e.lost(node.Layer{VolumeID: inline.ID, Pod: "ci/build-2"}, errors.New("commit is larger than the volume quota"))
	if len(rec.got) != 1 || rec.got[0].ref.Kind != "Pod" || rec.got[0].ref.Name != "build-2" {
		t.Fatalf("inline volume: events %+v, want one on the pod only", rec.got)
	}
}

// recorder keeps the Events it is given.
type recorder struct {
	record.EventRecorder // the methods a test does not call
	got                  []event
}

type event struct {
	ref                   *corev1.ObjectReference
	kind, reason, message string
}

func (r *recorder) Event(obj runtime.Object, kind, reason, message string) {
	r.got = append(r.got, event{obj.(*corev1.ObjectReference), kind, reason, message})
}

// A commit that keeps failing is told to the claim, and to its pod only if
// the pod still exists.
func TestRetriedCommitsAreToldToTheClaimAndALivePod(t *testing.T) {
	m, err := cachegroup.Open(cachegroup.Config{NodeID: "n1", Dir: filepath.Join(t.TempDir(), "store"), NoNodeTier: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	vol, err := m.Group().CreateVolume(context.Background(), volume.Spec{Name: "pvc-5678", Quota: 1}, "")
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewSimpleClientset(
		&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-5678"},
			Spec: corev1.PersistentVolumeSpec{ClaimRef: &corev1.ObjectReference{Namespace: "ci", Name: "npm-cache"}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ci", Name: "still-here"}})
	rec := &recorder{}
	e := &events{client: client, recorder: rec, group: m.Group()}

	e.retrying(node.Layer{VolumeID: vol.ID, Pod: "ci/still-here"}, node.RetryThreshold, errors.New("home unreachable"))
	if len(rec.got) != 2 || rec.got[0].ref.Name != "npm-cache" || rec.got[1].ref.Name != "still-here" {
		t.Fatalf("events %+v, want one on the claim and one on the pod", rec.got)
	}
	for _, ev := range rec.got {
		if ev.reason != reasonRetrying || !strings.Contains(ev.message, "home unreachable") || !strings.Contains(ev.message, vol.ID) {
			t.Errorf("event %s %q, want %s naming the volume and the error", ev.reason, ev.message, reasonRetrying)
		}
	}
	rec.got = nil
	e.retrying(node.Layer{VolumeID: vol.ID, Pod: "ci/gone"}, node.RetryThreshold, errors.New("home unreachable"))
	if len(rec.got) != 1 || rec.got[0].ref.Kind != "PersistentVolumeClaim" {
		t.Fatalf("pod gone: events %+v, want one on the claim only", rec.got)
	}
}

// A wrong copy found while building a volume's snapshot is told to its claim.
func TestCorruptCopiesAreToldToTheClaim(t *testing.T) {
	m, err := cachegroup.Open(cachegroup.Config{NodeID: "n1", Dir: filepath.Join(t.TempDir(), "store"), NoNodeTier: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	vol, err := m.Group().CreateVolume(context.Background(), volume.Spec{Name: "pvc-9abc", Quota: 1}, "")
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewSimpleClientset(&corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pvc-9abc"},
		Spec: corev1.PersistentVolumeSpec{ClaimRef: &corev1.ObjectReference{Namespace: "ci", Name: "gradle-cache"}}})
	rec := &recorder{}
	e := &events{client: client, recorder: rec, group: m.Group()}
	d := cas.Sum([]byte("blob"))
	e.corrupt(vol.ID, d, "node-b")
	if len(rec.got) != 1 || rec.got[0].ref.Name != "gradle-cache" || rec.got[0].reason != reasonCorrupt ||
		!strings.Contains(rec.got[0].message, "node-b") || !strings.Contains(rec.got[0].message, d.String()) {
		t.Fatalf("events %+v, want one %s on the claim naming the member and the blob", rec.got, reasonCorrupt)
	}
}
