package driver

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
)

// The reasons of the Events: a pod's writes dropped or quarantined instead of
// committed; a pod's writes whose commit keeps failing (retried still).
const (
	reasonNotCommitted = "WritesNotCommitted"
	reasonRetrying     = "CommitRetrying"
	reasonCorrupt      = "CorruptCopy"
)

// events tells Kubernetes, as Events, what fails after a pod has ended: the
// writes of a pod that no later pod will see. They go to the claim of the
// volume (the PV's claimRef) and to the pod that wrote them.
type events struct {
	client   kubernetes.Interface
	recorder record.EventRecorder
	group    *group.Group
}

// newEvents returns the node's events in the cluster it runs in, or nil
// outside one (tests, the demo): there is nobody to tell there.
func newEvents(nodeID string, g *group.Group) *events {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		klog.V(1).InfoS("Not in a cluster: no Kubernetes Events", "reason", err.Error())
		return nil
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		klog.ErrorS(err, "Kubernetes client; no Events")
		return nil
	}
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &events{client: client, group: g,
		recorder: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "cachegroup-node", Host: nodeID})}
}

// watch has the node tier n tell e what fails after a pod has ended.
func (e *events) watch(n *node.Node) {
	n.Lost = e.lost
	n.Retrying = e.retrying
	n.Corrupt = e.corrupt
}

// corrupt posts a Warning on the claim of volume id: building its snapshot
// here, a copy of blob d that member from sent failed verification. It was
// discarded, fetched again from another member, and from's copy repaired;
// the Event says a disk or a member is going bad.
func (e *events) corrupt(id string, d cas.Digest, from string) {
	if ref := e.claimOf(id); ref != nil {
		e.recorder.Event(ref, corev1.EventTypeWarning, reasonCorrupt, bounded(fmt.Sprintf(
			"a copy of blob %s that member %s sent for volume %s failed verification: discarded, fetched from another member, and %s's copy repaired",
			d, from, id, from)))
	}
}

// maxMessage bounds an Event's message: Events are for people, the reason,
// not a dump.
const maxMessage = 1024

func bounded(msg string) string {
	if len(msg) > maxMessage {
		return msg[:maxMessage] + "..."
	}
	return msg
}

// retrying posts a Warning on the claim of layer l, and on its pod if the
// pod still exists, whose commit has failed attempts times in a row: the
// writes are kept and retried, but later pods do not see them yet.
func (e *events) retrying(l node.Layer, attempts int, why error) {
	msg := bounded(fmt.Sprintf("the writes of pod %s to volume %s failed to commit %d times in a row and are retried: %v",
		l.Pod, l.VolumeID, attempts, why))
	if ref := e.claimOf(l.VolumeID); ref != nil {
		e.recorder.Event(ref, corev1.EventTypeWarning, reasonRetrying, msg)
	}
	if ref := e.livePod(l.Pod); ref != nil {
		e.recorder.Event(ref, corev1.EventTypeWarning, reasonRetrying, msg)
	}
}

// livePod returns the pod namespace/name if it still exists.
func (e *events) livePod(nsName string) *corev1.ObjectReference {
	ns, name, ok := strings.Cut(nsName, "/")
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil // gone, or not known: the claim's Event still says it
	}
	return &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: name, UID: p.UID}
}

// lost posts a Warning on the claim and the pod of layer l, whose writes are
// not committed because of why. It is called by the committer, so it bounds
// its own look-ups.
func (e *events) lost(l node.Layer, why error) {
	msg := bounded("the writes of this pod to volume " + l.VolumeID + " are not committed: " + why.Error())
	if ref := e.claimOf(l.VolumeID); ref != nil {
		e.recorder.Event(ref, corev1.EventTypeWarning, reasonNotCommitted, msg)
	}
	if ns, name, ok := strings.Cut(l.Pod, "/"); ok {
		pod := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: ns, Name: name}
		e.recorder.Event(pod, corev1.EventTypeWarning, reasonNotCommitted, msg)
	}
}

// claimOf returns the claim bound to the PV of volume id, or nil if the
// volume is not a PV's (an inline volume) or cannot be looked up.
func (e *events) claimOf(id string) *corev1.ObjectReference {
	if id == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := e.group.Volume(ctx, id)
	if err != nil {
		return nil // gone, or unreachable: the pod's Event still says it
	}
	// A PV is named as the volume was created (CreateVolume's name).
	pv, err := e.client.CoreV1().PersistentVolumes().Get(ctx, v.Name, metav1.GetOptions{})
	if err != nil || pv.Spec.ClaimRef == nil {
		return nil
	}
	c := pv.Spec.ClaimRef
	return &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: c.Namespace, Name: c.Name, UID: c.UID}
}
