// Package manifests tests the Helm chart deploy/helm/cachegroup, rendered
// with its defaults and several value sets (the real-cluster test's among
// them), and deploy/kubernetes, the kustomize manifests generated from it:
// every YAML decodes strictly into typed Kubernetes objects, and the objects
// agree with each other and with the driver binary (driver name, socket paths,
// service accounts, RBAC, flags, mount options, images).
package manifests

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	storagev1 "k8s.io/api/storage/v1"
	"sigs.k8s.io/yaml"

	"github.com/cachegroup/cachegroup/pkg/driver"
)

const (
	deployDir  = "deploy/kubernetes"
	baseDir    = deployDir + "/base"
	classesDir = deployDir + "/classes"
	exampleDir = deployDir + "/overlays/example"
	examples   = deployDir + "/examples"
	e2eDir     = "test/e2e-k8s"
	driverName = driver.DefaultName

	// The names of the driver's containers in the node DaemonSet and controller
	// Deployment.
	driverContainer = "cachegroup"
)

// The node plugins' DaemonSets and the role each has.
const (
	memberDaemonSetName = "cachegroup-member"
	clientDaemonSetName = "cachegroup-client"
	systemNamespace     = "cachegroup-system"
)

// memberDaemonSet returns the members' DaemonSet.
func memberDaemonSet(t *testing.T, ix index) *appsv1.DaemonSet {
	t.Helper()
	o, ok := ix.get("DaemonSet", systemNamespace, memberDaemonSetName)
	if !ok {
		t.Fatalf("no DaemonSet %s", memberDaemonSetName)
	}
	return o.obj.(*appsv1.DaemonSet)
}

// clientDaemonSet returns the client-only node plugins' DaemonSet, or nil.
func clientDaemonSet(ix index) *appsv1.DaemonSet {
	if o, ok := ix.get("DaemonSet", systemNamespace, clientDaemonSetName); ok {
		return o.obj.(*appsv1.DaemonSet)
	}
	return nil
}

// nodeDaemonSets returns every node plugin DaemonSet: the members', and the
// clients' if there is one. There is no other DaemonSet.
func nodeDaemonSets(t *testing.T, ix index) []*appsv1.DaemonSet {
	t.Helper()
	out := []*appsv1.DaemonSet{memberDaemonSet(t, ix)}
	if c := clientDaemonSet(ix); c != nil {
		out = append(out, c)
	}
	if n := len(ix.all("DaemonSet")); n != len(out) {
		t.Errorf("%d DaemonSets, want the members' and the clients' only", n)
	}
	return out
}

// isClient says whether a node plugin DaemonSet is the client-only one.
func isClient(ds *appsv1.DaemonSet) bool { return ds.Name == clientDaemonSetName }

// podSpecs returns the pod specs of every node plugin DaemonSet and the
// controller.
func podSpecs(t *testing.T, ix index) []*corev1.PodSpec {
	t.Helper()
	var out []*corev1.PodSpec
	for _, ds := range nodeDaemonSets(t, ix) {
		out = append(out, &ds.Spec.Template.Spec)
	}
	return append(out, &controllerDeployment(t, ix).Spec.Template.Spec)
}

func controllerDeployment(t *testing.T, ix index) *appsv1.Deployment {
	t.Helper()
	return ix.mustOne(t, "Deployment").obj.(*appsv1.Deployment)
}

func container(t *testing.T, spec *corev1.PodSpec, name string) *corev1.Container {
	t.Helper()
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	t.Fatalf("no container %q", name)
	return nil
}

// arg returns the value of --name=VALUE (or -name=VALUE) in a container's args.
func arg(c *corev1.Container, name string) (string, bool) {
	for _, a := range c.Args {
		for _, p := range []string{"--" + name + "=", "-" + name + "="} {
			if v, ok := strings.CutPrefix(a, p); ok {
				return v, true
			}
		}
		if a == "--"+name || a == "-"+name {
			return "", true
		}
	}
	return "", false
}

func mustArg(t *testing.T, c *corev1.Container, name string) string {
	t.Helper()
	v, ok := arg(c, name)
	if !ok {
		t.Fatalf("container %s: no --%s", c.Name, name)
	}
	return v
}

func volume(t *testing.T, spec *corev1.PodSpec, name string) corev1.Volume {
	t.Helper()
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no volume %q", name)
	return corev1.Volume{}
}

// mountOf returns the mount of c whose mount path holds p (the longest).
func mountOf(c *corev1.Container, p string) (corev1.VolumeMount, bool) {
	var best corev1.VolumeMount
	found := false
	for _, m := range c.VolumeMounts {
		if (p == m.MountPath || strings.HasPrefix(p, strings.TrimSuffix(m.MountPath, "/")+"/")) && len(m.MountPath) > len(best.MountPath) {
			best, found = m, true
		}
	}
	return best, found
}

// hostPathOf returns where path p of container c is on the host, through a
// hostPath volume.
func hostPathOf(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, p string) string {
	t.Helper()
	m, ok := mountOf(c, p)
	if !ok {
		t.Fatalf("container %s: %s is on no volume", c.Name, p)
	}
	v := volume(t, spec, m.Name)
	if v.HostPath == nil {
		t.Fatalf("container %s: %s is on volume %s, not a hostPath", c.Name, p, m.Name)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(p, m.MountPath), "/")
	return path.Join(v.HostPath.Path, rel)
}

func socketOf(t *testing.T, endpoint string) string {
	t.Helper()
	s, ok := strings.CutPrefix(endpoint, "unix://")
	if !ok || !path.IsAbs(s) {
		t.Fatalf("endpoint %q: want unix:///absolute/path", endpoint)
	}
	return s
}

func TestEveryYAMLDecodesStrictly(t *testing.T) {
	var files []string
	for _, dir := range []string{deployDir, e2eDir} {
		files = append(files, yamlFiles(t, dir)...)
	}
	patches := patchFiles(t)
	n := 0
	for _, f := range files {
		switch {
		case filepath.Base(f) == "kustomization.yaml":
			loadKustomization(t, filepath.Dir(f))
		case patches[f]:
			checkPatchFile(t, f)
		case filepath.Base(f) == "values.yaml":
			// Helm values (the chart renders them in TestChart*).
		default:
			n += len(loadFile(t, f))
		}
	}
	if n < 30 {
		t.Errorf("decoded only %d objects: are the manifests where this test looks?", n)
	}
}

// patchFiles returns the files kustomizations use as patches.
func patchFiles(t *testing.T) map[string]bool {
	out := map[string]bool{}
	for _, dir := range kustomizationDirs(t) {
		for _, p := range loadKustomization(t, dir).Patches {
			if p.Path != "" {
				out[filepath.Join(dir, p.Path)] = true
			}
		}
	}
	return out
}

func kustomizationDirs(t *testing.T) []string {
	var out []string
	for _, dir := range []string{deployDir, e2eDir} {
		for _, f := range yamlFiles(t, dir) {
			if filepath.Base(f) == "kustomization.yaml" {
				out = append(out, filepath.Dir(f))
			}
		}
	}
	return out
}

// checkPatchFile decodes a patch: a JSON 6902 operation list, or a strategic
// merge patch, which must decode strictly as its kind once kustomize's $patch
// directives are taken out.
func checkPatchFile(t *testing.T, f string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, f))
	if err != nil {
		t.Fatal(err)
	}
	var ops []struct {
		Op    string          `json:"op"`
		Path  string          `json:"path"`
		Value json.RawMessage `json:"value,omitempty"`
		From  string          `json:"from,omitempty"`
	}
	if yaml.UnmarshalStrict(b, &ops) == nil {
		for _, op := range ops {
			if !slices.Contains([]string{"add", "remove", "replace", "move", "copy", "test"}, op.Op) || !strings.HasPrefix(op.Path, "/") {
				t.Errorf("%s: bad JSON patch operation %+v", f, op)
			}
		}
		return
	}
	for i, doc := range splitDocs(b) {
		var m any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			t.Errorf("%s, document %d: %v", f, i+1, err)
			continue
		}
		clean, _ := yaml.Marshal(dropDirectives(m))
		if _, _, err := decodeStrict(clean); err != nil {
			t.Errorf("%s, document %d: %v", f, i+1, err)
		}
	}
}

func dropDirectives(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, x := range v {
			if !strings.HasPrefix(k, "$") {
				out[k] = dropDirectives(x)
			}
		}
		return out
	case []any:
		var out []any
		for _, x := range v {
			out = append(out, dropDirectives(x))
		}
		return out
	}
	return v
}

func TestKustomizationsReferenceWhatExists(t *testing.T) {
	for _, dir := range kustomizationDirs(t) {
		k := loadKustomization(t, dir)
		if k.APIVersion != "kustomize.config.k8s.io/v1beta1" && k.APIVersion != "kustomize.config.k8s.io/v1alpha1" {
			t.Errorf("%s: apiVersion %q", dir, k.APIVersion)
		}
		used := map[string]bool{}
		var objs []object
		for _, r := range append(slices.Clone(k.Resources), k.Components...) {
			rel := filepath.Join(dir, r)
			fi, err := os.Stat(filepath.Join(repoRoot, rel))
			switch {
			case err != nil:
				t.Errorf("%s: %s: %v", dir, r, err)
			case fi.IsDir():
				if _, err := os.Stat(filepath.Join(repoRoot, rel, "kustomization.yaml")); err != nil {
					t.Errorf("%s: %s is a directory without a kustomization.yaml", dir, r)
				} else if slices.Contains(k.Resources, r) {
					objs = append(objs, loadKustomize(t, rel)...)
				}
			default:
				used[rel] = true
				objs = append(objs, loadFile(t, rel)...)
			}
		}
		// A patch must hit an object the kustomization has.
		for _, p := range k.Patches {
			if p.Path == "" {
				t.Errorf("%s: inline patches are not used here; put them in a file", dir)
				continue
			}
			rel := filepath.Join(dir, p.Path)
			used[rel] = true
			kind, name := "", ""
			if p.Target != nil {
				kind, name = p.Target.Kind, p.Target.Name
			} else {
				b, err := os.ReadFile(filepath.Join(repoRoot, rel))
				if err != nil {
					t.Errorf("%s: patch %s: %v", dir, p.Path, err)
					continue
				}
				var meta struct {
					Kind     string `json:"kind"`
					Metadata struct {
						Name string `json:"name"`
					} `json:"metadata"`
				}
				if err := yaml.Unmarshal(b, &meta); err != nil {
					t.Errorf("%s: patch %s: %v", dir, p.Path, err)
					continue
				}
				kind, name = meta.Kind, meta.Metadata.Name
			}
			if k.Kind == "Component" {
				continue // applied to whatever includes it
			}
			if !slices.ContainsFunc(objs, func(o object) bool { return o.gvk.Kind == kind && o.obj.GetName() == name }) {
				t.Errorf("%s: patch %s targets %s %s, which none of its resources define", dir, p.Path, kind, name)
			}
		}
		// Every manifest beside a kustomization is part of it.
		ents, _ := os.ReadDir(filepath.Join(repoRoot, dir))
		for _, e := range ents {
			rel := filepath.Join(dir, e.Name())
			if strings.HasSuffix(e.Name(), ".yaml") && e.Name() != "kustomization.yaml" && !used[rel] {
				t.Errorf("%s is in %s but not in its kustomization", e.Name(), dir)
			}
		}
	}
}

func TestCSIDriver(t *testing.T) { forEachInstall(t, checkCSIDriver) }

func checkCSIDriver(t *testing.T, in install) {
	ix := in.ix
	o := ix.mustOne(t, "CSIDriver")
	d := o.obj.(*storagev1.CSIDriver)
	if d.Name != driverName {
		t.Errorf("CSIDriver name %q, want the driver's default name %q", d.Name, driverName)
	}
	if d.Spec.AttachRequired == nil || *d.Spec.AttachRequired {
		t.Error("attachRequired must be false: the driver has no ControllerPublish")
	}
	if d.Spec.PodInfoOnMount == nil || !*d.Spec.PodInfoOnMount {
		t.Error("podInfoOnMount must be true: inline volumes are scoped by the pod's namespace")
	}
	for _, m := range []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent, storagev1.VolumeLifecycleEphemeral} {
		if !slices.Contains(d.Spec.VolumeLifecycleModes, m) {
			t.Errorf("volumeLifecycleModes lacks %s", m)
		}
	}
	if d.Spec.FSGroupPolicy == nil || *d.Spec.FSGroupPolicy != storagev1.NoneFSGroupPolicy {
		t.Error("fsGroupPolicy must be None: a recursive chown would copy up and commit every file of the cache")
	}
}

func TestDriverNameAgreesEverywhere(t *testing.T) { forEachInstall(t, checkDriverName) }

func checkDriverName(t *testing.T, in install) {
	ix, cl := in.ix, in.ix
	for _, o := range cl.all("StorageClass") {
		if p := o.obj.(*storagev1.StorageClass).Provisioner; p != driverName {
			t.Errorf("%v: provisioner %q, want %q", o, p, driverName)
		}
	}
	for _, o := range cl.all("VolumeSnapshotClass") {
		if d := o.obj.(*VolumeSnapshotClass).Driver; d != driverName {
			t.Errorf("%v: driver %q, want %q", o, d, driverName)
		}
	}
	for _, spec := range podSpecs(t, ix) {
		if n := mustArg(t, container(t, spec, driverContainer), "driver-name"); n != driverName {
			t.Errorf("--driver-name=%s, want %s", n, driverName)
		}
	}
	for _, f := range yamlFiles(t, examples) {
		for _, o := range loadFile(t, f) {
			if pod, ok := o.obj.(*corev1.Pod); ok {
				for _, v := range pod.Spec.Volumes {
					if v.CSI != nil && v.CSI.Driver != driverName {
						t.Errorf("%v: inline volume %s of driver %q", o, v.Name, v.CSI.Driver)
					}
				}
			}
		}
	}
}

// TestNodeSocketPaths follows the driver's socket from the driver container
// to the kubelet: the registrar and liveness probe dial the same socket, the
// registrar tells the kubelet the socket's host path, which is the kubelet's
// plugins/<driver> directory, and the registration socket lands in the
// kubelet's plugins_registry.
func TestNodeSocketPaths(t *testing.T) {
	forEachInstall(t, func(t *testing.T, in install) {
		for _, ds := range nodeDaemonSets(t, in.ix) {
			t.Run(ds.Name, func(t *testing.T) { checkNodeSocketPaths(t, ds, in.kubeletDir) })
		}
	})
}

func checkNodeSocketPaths(t *testing.T, ds *appsv1.DaemonSet, kubeletDir string) {
	spec := &ds.Spec.Template.Spec
	drv := container(t, spec, driverContainer)
	reg := container(t, spec, "node-driver-registrar")
	probe := container(t, spec, "liveness-probe")

	sock := socketOf(t, mustArg(t, drv, "endpoint"))
	hostSock := hostPathOf(t, spec, drv, sock)
	if want := path.Join(kubeletDir, "plugins", driverName, "csi.sock"); hostSock != want {
		t.Errorf("driver socket is %s on the host, want %s", hostSock, want)
	}
	for _, c := range []*corev1.Container{reg, probe} {
		addr := mustArg(t, c, "csi-address")
		if got := hostPathOf(t, spec, c, addr); got != hostSock {
			t.Errorf("%s dials %s (%s on the host), the driver listens on %s", c.Name, addr, got, hostSock)
		}
	}
	if got := mustArg(t, reg, "kubelet-registration-path"); got != hostSock {
		t.Errorf("registrar tells the kubelet %s, the socket is at %s", got, hostSock)
	}
	regDir, ok := arg(reg, "plugin-registration-path")
	if !ok {
		regDir = "/registration"
	}
	if got := hostPathOf(t, spec, reg, regDir); got != path.Join(kubeletDir, "plugins_registry") {
		t.Errorf("registrar's registration directory is %s on the host, want %s/plugins_registry", got, kubeletDir)
	}
	if v := volume(t, spec, mustMount(t, reg, regDir).Name); v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectory {
		t.Errorf("the kubelet's plugins_registry must already exist (hostPath type Directory)")
	}
	// Target paths the kubelet passes are host paths below its directory: the
	// driver must see them at the same path, and its mounts there must reach
	// the host.
	m := mustMount(t, drv, path.Join(kubeletDir, "pods"))
	if m.MountPath != kubeletDir || hostPathOf(t, spec, drv, kubeletDir) != kubeletDir {
		t.Errorf("driver must mount the kubelet directory %s at the same path, has %s", kubeletDir, m.MountPath)
	}
	if m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
		t.Errorf("kubelet directory mount must be Bidirectional")
	}
	if drv.SecurityContext == nil || drv.SecurityContext.Privileged == nil || !*drv.SecurityContext.Privileged {
		t.Errorf("driver container must be privileged (Bidirectional propagation, mounts)")
	}
}

func mustMount(t *testing.T, c *corev1.Container, p string) corev1.VolumeMount {
	t.Helper()
	m, ok := mountOf(c, p)
	if !ok {
		t.Fatalf("container %s: %s is on no volume", c.Name, p)
	}
	return m
}

func TestControllerSocketPaths(t *testing.T) { forEachInstall(t, checkControllerSocketPaths) }

func checkControllerSocketPaths(t *testing.T, in install) {
	dep := controllerDeployment(t, in.ix)
	spec := &dep.Spec.Template.Spec
	drv := container(t, spec, driverContainer)
	sock := socketOf(t, mustArg(t, drv, "endpoint"))
	sockVol := mustMount(t, drv, sock)
	for _, name := range []string{"csi-provisioner", "csi-snapshotter", "csi-resizer", "liveness-probe"} {
		c := container(t, spec, name)
		addr := mustArg(t, c, "csi-address")
		m := mustMount(t, c, addr)
		if m.Name != sockVol.Name || strings.TrimPrefix(addr, m.MountPath) != strings.TrimPrefix(sock, sockVol.MountPath) {
			t.Errorf("%s dials %s on volume %s; the driver listens on %s on volume %s", name, addr, m.Name, sock, sockVol.Name)
		}
	}
	for _, name := range []string{"csi-provisioner", "csi-snapshotter", "csi-resizer"} {
		if _, ok := arg(container(t, spec, name), "leader-election"); !ok {
			t.Errorf("%s runs without --leader-election in a Deployment of %d replicas", name, *dep.Spec.Replicas)
		}
	}
}

// TestNodePlugin: members and clients run on the host network as their node,
// members keep their store on a cache disk that must exist and serve peers;
// clients are --client-only, serve no peers, and make their store directory.
func TestNodePlugin(t *testing.T) {
	forEachInstall(t, func(t *testing.T, in install) {
		for _, ds := range nodeDaemonSets(t, in.ix) {
			t.Run(ds.Name, func(t *testing.T) { checkNodePlugin(t, in, ds) })
		}
	})
}

func checkNodePlugin(t *testing.T, in install, ds *appsv1.DaemonSet) {
	ix := in.ix
	spec := &ds.Spec.Template.Spec
	drv := container(t, spec, driverContainer)
	if !spec.HostNetwork {
		t.Error("node plugins need hostNetwork: a member's address is its host's")
	}
	if mode := mustArg(t, drv, "mode"); mode != "node" {
		t.Errorf("node plugin --mode=%s", mode)
	}
	if id := mustArg(t, drv, "node-id"); id != "$(NODE_NAME)" {
		t.Errorf("--node-id=%s, want $(NODE_NAME)", id)
	}
	if !slices.ContainsFunc(drv.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Error("NODE_NAME must come from spec.nodeName")
	}
	store := volume(t, spec, mustMount(t, drv, mustArg(t, drv, "store")).Name)
	_, clientOnly := arg(drv, "client-only")
	hasPeerPort := slices.ContainsFunc(drv.Ports, func(p corev1.ContainerPort) bool { return p.Name == "peer" })
	if isClient(ds) {
		if !clientOnly {
			t.Error("client node plugins must run --client-only: build nodes never own data")
		}
		if store.HostPath == nil || store.HostPath.Type == nil || *store.HostPath.Type != corev1.HostPathDirectoryOrCreate {
			t.Error("a client's store must be a hostPath of type DirectoryOrCreate: its node has no cache disk, and its node tier must outlive the pod")
		}
		if hasPeerPort {
			t.Error("client node plugins serve no peers, yet declare a peer port")
		}
		if spec.Affinity == nil || spec.Affinity.NodeAffinity == nil || spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			t.Error("client node plugins have no required node affinity: they must keep off member nodes")
		}
	} else {
		if clientOnly {
			t.Error("members must not run --client-only")
		}
		if store.HostPath == nil || store.HostPath.Type == nil || *store.HostPath.Type != corev1.HostPathDirectory {
			t.Error("the store must be a hostPath of type Directory: the cache disk must exist")
		}
		if !hasPeerPort {
			t.Error("driver container has no peer port")
		}
	}
	for _, s := range []string{in.peerSecret, in.tlsSecret} {
		if s != "" && !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Secret != nil && v.Secret.SecretName == s }) {
			t.Errorf("node plugin does not mount Secret %s", s)
		}
	}
	if pc := spec.PriorityClassName; pc == "" {
		t.Error("node plugin has no priority class")
	} else if _, ok := ix.get("PriorityClass", "", pc); !ok && !strings.HasPrefix(pc, "system-") {
		t.Errorf("priority class %s is not defined", pc)
	}
	for _, c := range spec.Containers {
		if c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("container %s has no memory request or limit", c.Name)
		}
	}
	if !slices.ContainsFunc(spec.Tolerations, func(t corev1.Toleration) bool { return t.Operator == corev1.TolerationOpExists && t.Key == "" }) {
		t.Error("node plugin must tolerate every taint: it must run wherever pods mount caches")
	}
	// Sizes: each a Kubernetes quantity the driver parses, through the
	// environment variable its flag names.
	for _, f := range []string{"cache-size", "free-floor"} {
		v := mustArg(t, drv, f)
		if name, ok := strings.CutPrefix(v, "$("); ok {
			name = strings.TrimSuffix(name, ")")
			i := slices.IndexFunc(drv.Env, func(e corev1.EnvVar) bool { return e.Name == name })
			if i < 0 {
				t.Errorf("--%s=%s: no such environment variable", f, v)
				continue
			}
			v = drv.Env[i].Value
		}
		if _, err := driver.ParseSize(v); err != nil {
			t.Errorf("--%s: %v", f, err)
		}
	}
}

// TestPortsDoNotCollide: node plugins share their host's network, and the
// controller may too, so no two listeners of the two pods share a port. A port
// a container declares and a sidecar of the same pod serves (healthz) is one
// listener.
func TestPortsDoNotCollide(t *testing.T) {
	forEachInstall(t, func(t *testing.T, in install) {
		// A node runs a member or a client, never both; the controller may
		// share either's host.
		for _, ds := range nodeDaemonSets(t, in.ix) {
			t.Run(ds.Name, func(t *testing.T) { checkPorts(t, ds, controllerDeployment(t, in.ix)) })
		}
	})
}

func checkPorts(t *testing.T, ds *appsv1.DaemonSet, dep *appsv1.Deployment) {
	owner := map[int32]string{}
	for _, spec := range []*corev1.PodSpec{&ds.Spec.Template.Spec, &dep.Spec.Template.Spec} {
		pod := map[int32]string{}
		for _, c := range spec.Containers {
			served := map[int32]bool{}
			for _, a := range []string{"health-port", "http-endpoint", "metrics-address", "peer-address"} {
				_, clientOnly := arg(&c, "client-only")
				if m, _ := arg(&c, "mode"); a == "peer-address" && (m == "controller" || clientOnly) {
					continue // a client of the group: dials the port, serves none
				}
				if v, ok := arg(&c, a); ok {
					ps := v
					if _, after, found := strings.Cut(v, ":"); found {
						ps = after
					}
					n, err := strconv.Atoi(ps)
					if err != nil {
						t.Errorf("container %s: --%s=%s has no port", c.Name, a, v)
						continue
					}
					served[int32(n)] = true
				}
			}
			for p := range served {
				if prev, dup := pod[p]; dup {
					t.Errorf("%s: port %d is served by %s and %s", spec.ServiceAccountName, p, prev, c.Name)
				}
				pod[p] = c.Name
			}
		}
		for _, c := range spec.Containers {
			for _, p := range c.Ports {
				if _, ok := pod[p.ContainerPort]; !ok {
					pod[p.ContainerPort] = c.Name
				}
			}
		}
		for p, c := range pod {
			if prev, dup := owner[p]; dup {
				t.Errorf("port %d is used by %s and %s/%s", p, prev, spec.ServiceAccountName, c)
			}
			owner[p] = spec.ServiceAccountName + "/" + c
		}
	}
	// Liveness probes must hit the port the liveness-probe sidecar serves.
	for _, spec := range []*corev1.PodSpec{&ds.Spec.Template.Spec, &dep.Spec.Template.Spec} {
		hp := mustArg(t, container(t, spec, "liveness-probe"), "health-port")
		drv := container(t, spec, driverContainer)
		if drv.LivenessProbe == nil || drv.LivenessProbe.HTTPGet == nil {
			t.Fatal("driver container has no HTTP liveness probe")
		}
		port := drv.LivenessProbe.HTTPGet.Port.String()
		for _, p := range drv.Ports {
			if p.Name == port {
				port = strconv.Itoa(int(p.ContainerPort))
			}
		}
		if port != hp {
			t.Errorf("driver liveness probe checks port %s, the liveness-probe sidecar serves %s", port, hp)
		}
	}
}

func TestMembersService(t *testing.T) { forEachInstall(t, checkMembersService) }

func checkMembersService(t *testing.T, in install) {
	ix := in.ix
	ds := memberDaemonSet(t, ix)
	// The Service the members find each other through.
	ms := strings.ReplaceAll(mustArg(t, container(t, &ds.Spec.Template.Spec, driverContainer), "members-service"), "$(POD_NAMESPACE)", ds.Namespace)
	ns, name, _ := strings.Cut(ms, "/")
	o, ok := ix.get("Service", ns, name)
	if !ok {
		t.Fatalf("no Service %s", ms)
	}
	svc := o.obj.(*corev1.Service)
	if svc.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("members Service %s is not headless", ms)
	}
	if svc.Namespace != ds.Namespace {
		t.Errorf("members Service in %s, node plugins in %s", svc.Namespace, ds.Namespace)
	}
	if svc.Spec.PublishNotReadyAddresses {
		t.Error("members must be ready endpoints only")
	}
	for k, v := range svc.Spec.Selector {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("members Service selects %s=%s, member pods have %q", k, v, ds.Spec.Template.Labels[k])
		}
	}
	if c := clientDaemonSet(ix); c != nil {
		selects := true
		for k, v := range svc.Spec.Selector {
			selects = selects && c.Spec.Template.Labels[k] == v
		}
		if selects {
			t.Error("members Service selects the client-only pods: clients must never be members")
		}
	}
	drv := container(t, &ds.Spec.Template.Spec, driverContainer)
	for _, p := range svc.Spec.Ports {
		if !slices.ContainsFunc(drv.Ports, func(cp corev1.ContainerPort) bool {
			return cp.Name == p.TargetPort.String() || cp.ContainerPort == p.TargetPort.IntVal
		}) {
			t.Errorf("members Service port %s targets %s, which the driver container does not expose", p.Name, p.TargetPort.String())
		}
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "peer" }) {
		t.Error("members Service has no peer port")
	}
}

// TestMembershipWiring: the node plugins and the controller find the members
// through the headless Service, dial the port the node plugins serve, and read
// the peer secret from the Secret volume.
func TestMembershipWiring(t *testing.T) { forEachInstall(t, checkMembershipWiring) }

func checkMembershipWiring(t *testing.T, in install) {
	ix := in.ix
	ds, dep := memberDaemonSet(t, ix), controllerDeployment(t, ix)
	nodeDrv := container(t, &ds.Spec.Template.Spec, driverContainer)
	peerPort := ""
	for _, p := range nodeDrv.Ports {
		if p.Name == "peer" {
			peerPort = strconv.Itoa(int(p.ContainerPort))
		}
	}
	type workload struct {
		who  string
		ns   string
		spec *corev1.PodSpec
	}
	ws := []workload{{"member", ds.Namespace, &ds.Spec.Template.Spec}, {"controller", dep.Namespace, &dep.Spec.Template.Spec}}
	if c := clientDaemonSet(ix); c != nil {
		ws = append(ws, workload{"client", c.Namespace, &c.Spec.Template.Spec})
	}
	for _, w := range ws {
		c := container(t, w.spec, driverContainer)
		ms := mustArg(t, c, "members-service")
		if strings.Contains(ms, "$(POD_NAMESPACE)") {
			if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
				return e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace"
			}) {
				t.Errorf("%s: --members-service uses $(POD_NAMESPACE), which is not the pod's namespace", w.who)
			}
			ms = strings.ReplaceAll(ms, "$(POD_NAMESPACE)", w.ns)
		}
		ns, name, _ := strings.Cut(ms, "/")
		if o, ok := ix.get("Service", ns, name); !ok {
			t.Errorf("%s: --members-service=%s: no such Service", w.who, ms)
		} else if o.obj.(*corev1.Service).Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("%s: --members-service=%s is not headless", w.who, ms)
		}
		pa := mustArg(t, c, "peer-address")
		if _, port, _ := strings.Cut(pa, ":"); port != peerPort {
			t.Errorf("%s: --peer-address=%s, the node plugins serve peers on port %s", w.who, pa, peerPort)
		}
		checkPeerCredentials(t, in, w.who, w.spec, c)
		if r := mustArg(t, c, "replicas"); r != mustArg(t, nodeDrv, "replicas") {
			t.Errorf("%s: --replicas=%s differs from the node plugins'", w.who, r)
		}
	}
	if in.name != "kustomize" {
		return
	}
	b, err := os.ReadFile(filepath.Join(repoRoot, baseDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "create secret generic cachegroup-peer") || !strings.Contains(string(b), "--from-literal=secret=") {
		t.Error("base/kustomization.yaml does not say how to create the peer Secret")
	}
}

// checkPeerCredentials: the driver reads the peer secret from key "secret" of
// the install's peer Secret, and with TLS its certificate, key and CA from
// tls.crt, tls.key and ca.crt of the TLS Secret; nothing when the install
// has neither.
func checkPeerCredentials(t *testing.T, in install, who string, spec *corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	file := func(flag, secret, key string) {
		f, ok := arg(c, flag)
		if secret == "" {
			if ok {
				t.Errorf("%s: --%s without a Secret for it", who, flag)
			}
			return
		}
		if !ok {
			t.Errorf("%s: no --%s", who, flag)
			return
		}
		m := mustMount(t, c, f)
		v := volume(t, spec, m.Name)
		if v.Secret == nil || v.Secret.SecretName != secret || path.Base(f) != key || path.Dir(f) != m.MountPath || !m.ReadOnly {
			t.Errorf("%s: --%s=%s is not key %q of Secret %s, mounted read-only", who, flag, f, key, secret)
		}
	}
	file("peer-secret-file", in.peerSecret, "secret")
	file("peer-tls-cert", in.tlsSecret, "tls.crt")
	file("peer-tls-key", in.tlsSecret, "tls.key")
	file("peer-tls-ca", in.tlsSecret, "ca.crt")
}

// permission is one verb on one resource, in one namespace ("" for cluster
// scope).
type permission struct{ ns, group, resource, verb string }

// granted returns what the service account ns/name may do through the
// manifests' (Cluster)RoleBindings.
func granted(t *testing.T, ix index, ns, name string) []permission {
	t.Helper()
	var out []permission
	add := func(scope string, rules []rbacv1.PolicyRule) {
		for _, r := range rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						out = append(out, permission{scope, g, res, v})
					}
				}
			}
		}
	}
	isSubject := func(ss []rbacv1.Subject) bool {
		return slices.ContainsFunc(ss, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == name && s.Namespace == ns
		})
	}
	for _, o := range ix.all("ClusterRoleBinding") {
		b := o.obj.(*rbacv1.ClusterRoleBinding)
		if isSubject(b.Subjects) {
			if r, ok := ix.get("ClusterRole", "", b.RoleRef.Name); ok {
				add("", r.obj.(*rbacv1.ClusterRole).Rules)
			}
		}
	}
	for _, o := range ix.all("RoleBinding") {
		b := o.obj.(*rbacv1.RoleBinding)
		if !isSubject(b.Subjects) {
			continue
		}
		switch b.RoleRef.Kind {
		case "Role":
			if r, ok := ix.get("Role", b.Namespace, b.RoleRef.Name); ok {
				add(b.Namespace, r.obj.(*rbacv1.Role).Rules)
			}
		case "ClusterRole":
			if r, ok := ix.get("ClusterRole", "", b.RoleRef.Name); ok {
				add(b.Namespace, r.obj.(*rbacv1.ClusterRole).Rules)
			}
		}
	}
	return out
}

func allows(ps []permission, want permission) bool {
	return slices.ContainsFunc(ps, func(p permission) bool {
		return (p.ns == "" || p.ns == want.ns) && p.group == want.group && p.resource == want.resource && p.verb == want.verb
	})
}

// perms expands "group/resource: verbs" into permissions in namespace ns.
func perms(ns string, spec map[string]string) []permission {
	var out []permission
	for gr, verbs := range spec {
		g, r, _ := strings.Cut(gr, "/")
		for _, v := range strings.Fields(verbs) {
			out = append(out, permission{ns, g, r, v})
		}
	}
	return out
}

func TestServiceAccountsAndRoleRefsExist(t *testing.T) { forEachInstall(t, checkServiceAccounts) }

func checkServiceAccounts(t *testing.T, in install) {
	ix := in.ix
	for _, spec := range podSpecs(t, ix) {
		if spec.ServiceAccountName == "" {
			t.Error("a workload runs as the default service account")
		} else if _, ok := ix.get("ServiceAccount", systemNamespace, spec.ServiceAccountName); !ok {
			t.Errorf("service account %s/%s does not exist", systemNamespace, spec.ServiceAccountName)
		}
	}
	subjects := func(ss []rbacv1.Subject, where string) {
		for _, s := range ss {
			if s.Kind != "ServiceAccount" {
				t.Errorf("%s binds %s %s: only service accounts are expected", where, s.Kind, s.Name)
			} else if _, ok := ix.get("ServiceAccount", s.Namespace, s.Name); !ok {
				t.Errorf("%s binds service account %s/%s, which does not exist", where, s.Namespace, s.Name)
			}
		}
	}
	for _, o := range ix.all("ClusterRoleBinding") {
		b := o.obj.(*rbacv1.ClusterRoleBinding)
		subjects(b.Subjects, o.String())
		if _, ok := ix.get("ClusterRole", "", b.RoleRef.Name); !ok || b.RoleRef.Kind != "ClusterRole" {
			t.Errorf("%v refers to missing %s %s", o, b.RoleRef.Kind, b.RoleRef.Name)
		}
	}
	for _, o := range ix.all("RoleBinding") {
		b := o.obj.(*rbacv1.RoleBinding)
		subjects(b.Subjects, o.String())
		if _, ok := ix.get(b.RoleRef.Kind, map[bool]string{true: b.Namespace}[b.RoleRef.Kind == "Role"], b.RoleRef.Name); !ok {
			t.Errorf("%v refers to missing %s %s", o, b.RoleRef.Kind, b.RoleRef.Name)
		}
	}
}

// TestRBACCoversSidecarsAndNoMore: the controller's and node plugin's service
// accounts may do what their containers need (from each sidecar's upstream RBAC,
// less the features the driver does not have: attach, topology, capacity
// objects, group snapshots, volume modification) and nothing else.
func TestRBACCoversSidecarsAndNoMore(t *testing.T) { forEachInstall(t, checkRBAC) }

func checkRBAC(t *testing.T, in install) {
	ix := in.ix
	dep := controllerDeployment(t, ix)
	for _, ds := range nodeDaemonSets(t, ix) {
		checkNodeRBAC(t, ix, ds)
	}
	cns := dep.Namespace
	need := map[string][]permission{
		"csi-provisioner": perms("", map[string]string{
			"/persistentvolumes":                             "get list watch create patch delete",
			"/persistentvolumeclaims":                        "get list watch update",
			"storage.k8s.io/storageclasses":                  "get list watch",
			"/events":                                        "create patch",
			"snapshot.storage.k8s.io/volumesnapshots":        "get list watch update",
			"snapshot.storage.k8s.io/volumesnapshotcontents": "get",
		}),
		"csi-snapshotter": perms("", map[string]string{
			"/events": "create patch",
			"snapshot.storage.k8s.io/volumesnapshotclasses":         "get list watch",
			"snapshot.storage.k8s.io/volumesnapshotcontents":        "get list watch update patch",
			"snapshot.storage.k8s.io/volumesnapshotcontents/status": "update patch",
		}),
		"csi-resizer": perms("", map[string]string{
			"/persistentvolumes":             "get list watch patch",
			"/persistentvolumeclaims":        "get list watch",
			"/persistentvolumeclaims/status": "patch",
			"/events":                        "create patch",
		}),
		"leader election": perms(cns, map[string]string{"coordination.k8s.io/leases": "get create update"}),
		"membership":      perms(cns, map[string]string{"discovery.k8s.io/endpointslices": "get list watch"}),
	}
	have := granted(t, ix, cns, dep.Spec.Template.Spec.ServiceAccountName)
	var all []permission
	for who, ps := range need {
		for _, p := range ps {
			if !allows(have, p) {
				t.Errorf("controller: %s needs %s %s/%s in %q", who, p.verb, p.group, p.resource, p.ns)
			}
		}
		all = append(all, ps...)
	}
	// Nothing beyond the sidecars' upstream rules (leases: all verbs the
	// leader-election library may use).
	extra := append(all, perms(cns, map[string]string{"coordination.k8s.io/leases": "list watch delete", "/events": "update"})...)
	extra = append(extra, perms("", map[string]string{"/events": "update"})...)
	for _, p := range have {
		if !slices.ContainsFunc(extra, func(e permission) bool {
			return e.group == p.group && e.resource == p.resource && e.verb == p.verb && (e.ns == p.ns || e.ns == "" && p.ns == "")
		}) {
			t.Errorf("controller may %s %s/%s in %q, which no sidecar needs", p.verb, p.group, p.resource, p.ns)
		}
	}

	for _, kind := range []string{"Role", "ClusterRole"} {
		for _, o := range ix.all(kind) {
			var rules []rbacv1.PolicyRule
			if r, ok := o.obj.(*rbacv1.Role); ok {
				rules = r.Rules
			} else {
				rules = o.obj.(*rbacv1.ClusterRole).Rules
			}
			for _, r := range rules {
				if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") {
					t.Errorf("%v has a wildcard rule", o)
				}
				if slices.Contains(r.Resources, "secrets") {
					t.Errorf("%v grants access to secrets", o)
				}
			}
		}
	}
}

// checkNodeRBAC: a node plugin (member or client) may read the members'
// EndpointSlices, and PVs and make Events for pods' lost writes; no more.
func checkNodeRBAC(t *testing.T, ix index, ds *appsv1.DaemonSet) {
	t.Helper()
	nodeHave := granted(t, ix, ds.Namespace, ds.Spec.Template.Spec.ServiceAccountName)
	nodeNeed := perms(ds.Namespace, map[string]string{"discovery.k8s.io/endpointslices": "get list watch"})
	// Events on the claim and the pod whose writes were not committed.
	nodeNeed = append(nodeNeed, perms("", map[string]string{"/persistentvolumes": "get", "/events": "create patch"})...)
	for _, p := range nodeNeed {
		if !allows(nodeHave, p) {
			t.Errorf("node plugin needs %s %s/%s", p.verb, p.group, p.resource)
		}
	}
	for _, p := range nodeHave {
		if !slices.Contains(nodeNeed, p) {
			t.Errorf("%s may %s %s/%s in %q, which it does not need", ds.Name, p.verb, p.group, p.resource, p.ns)
		}
	}
}

// driverFlags returns the flags cmd/cachegroup-csi defines, read from its
// source: flag.XxxVar(&v, "name", ...), flag.Xxx("name", ...), flag.Var(v,
// "name", ...), plus klog's -v.
func driverFlags(t *testing.T) map[string]bool {
	t.Helper()
	flags := map[string]bool{"v": true, "vmodule": true}
	dir := filepath.Join(repoRoot, "cmd", "cachegroup-csi")
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || (x.Name != "flag" && x.Name != "fs" && x.Name != "flags") {
				return true
			}
			for _, a := range call.Args[:min(2, len(call.Args))] {
				if lit, ok := a.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, err := strconv.Unquote(lit.Value); err == nil {
						flags[s] = true
					}
					break
				}
			}
			return true
		})
	}
	if !flags["mode"] || !flags["endpoint"] {
		t.Fatalf("read no flags from %s: %v", dir, flags)
	}
	return flags
}

var flagArg = regexp.MustCompile(`^--?([a-z0-9-]+)(=|$)`)

// TestDriverArgsAreFlagsOfTheBinary: the driver containers pass only flags the
// binary defines (an unknown flag is a crash loop).
func TestDriverArgsAreFlagsOfTheBinary(t *testing.T) {
	flags := driverFlags(t)
	forEachInstall(t, func(t *testing.T, in install) { checkDriverArgs(t, in, flags) })
}

func checkDriverArgs(t *testing.T, in install, flags map[string]bool) {
	ix := in.ix
	specs := map[string]*corev1.PodSpec{"controller": &controllerDeployment(t, ix).Spec.Template.Spec}
	for _, ds := range nodeDaemonSets(t, ix) {
		specs[ds.Name] = &ds.Spec.Template.Spec
	}
	for who, spec := range specs {
		c := container(t, spec, driverContainer)
		if len(c.Command) > 0 {
			t.Errorf("%s: the driver container overrides the image's entrypoint", who)
		}
		for _, a := range c.Args {
			m := flagArg.FindStringSubmatch(a)
			if m == nil {
				t.Errorf("%s: argument %q is not a flag", who, a)
			} else if !flags[m[1]] {
				t.Errorf("%s: --%s is not a flag of cmd/cachegroup-csi", who, m[1])
			}
		}
		if mode := mustArg(t, c, "mode"); mode != "node" && mode != "controller" {
			t.Errorf("%s: --mode=%s", who, mode)
		}
		// $(VAR) in an argument is expanded by the kubelet only if the
		// container has VAR; otherwise the driver gets it verbatim.
		for _, a := range c.Args {
			for _, m := range envRef.FindAllStringSubmatch(a, -1) {
				if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == m[1] }) {
					t.Errorf("%s: argument %q refers to $(%s), which the container does not have", who, a, m[1])
				}
			}
		}
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Z_][A-Z0-9_]*)\)`)

// TestGroupAndMountOptions parses every StorageClass's mount options and every
// inline volume's attributes with the driver's own parser, and checks that the
// group they name is the node plugins' group.
func TestGroupAndMountOptions(t *testing.T) { forEachInstall(t, checkGroupAndMountOptions) }

func checkGroupAndMountOptions(t *testing.T, in install) {
	ix, cl := in.ix, in.ix
	group := mustArg(t, container(t, &memberDaemonSet(t, ix).Spec.Template.Spec, driverContainer), "group")
	for _, spec := range podSpecs(t, ix) {
		if g := mustArg(t, container(t, spec, driverContainer), "group"); g != group {
			t.Errorf("--group=%s, the members' --group=%s", g, group)
		}
	}
	scs := cl.all("StorageClass")
	if len(scs) == 0 {
		t.Fatal("no StorageClass")
	}
	for _, o := range scs {
		sc := o.obj.(*storagev1.StorageClass)
		opts, err := driver.ParseOptions(sc.MountOptions, nil)
		if err != nil {
			t.Errorf("%v: %v", o, err)
			continue
		}
		if opts.Group != "" && opts.Group != group {
			t.Errorf("%v: cache-group=%s, but the node plugins serve %s", o, opts.Group, group)
		}
		if !opts.NoSharing {
			t.Errorf("%v: build pods should mount with no-sharing", o)
		}
		if sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("%v: allowVolumeExpansion must be true (the quota is the claim's size)", o)
		}
		if sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingImmediate {
			t.Errorf("%v: volumes have no topology; bind immediately", o)
		}
	}
	if sc, ok := cl.get("StorageClass", "", "cachegroup-ci"); !ok {
		t.Error("no StorageClass cachegroup-ci")
	} else if mo := sc.obj.(*storagev1.StorageClass).MountOptions; len(mo) < 2 || mo[0] != "cache-group="+group || mo[1] != "no-sharing" {
		t.Errorf("cachegroup-ci mount options %v, want cache-group=%s, no-sharing first", mo, group)
	}
	for _, f := range yamlFiles(t, examples) {
		for _, o := range loadFile(t, f) {
			pod, ok := o.obj.(*corev1.Pod)
			if !ok {
				continue
			}
			for _, v := range pod.Spec.Volumes {
				if v.CSI == nil {
					continue
				}
				attrs := v.CSI.VolumeAttributes
				if attrs["volume"] == "" {
					t.Errorf("%v: inline volume %s has no volume attribute", o, v.Name)
				}
				if s, ok := attrs["size"]; ok {
					if _, err := driver.ParseSize(s); err != nil {
						t.Errorf("%v: %v", o, err)
					}
				}
				if _, err := driver.ParseOptions(nil, attrs); err != nil {
					t.Errorf("%v: inline volume %s: %v", o, v.Name, err)
				}
			}
		}
	}
}

// TestImages: official sidecar images at pinned versions, the driver's image
// at a pinned tag; nothing pulled at every start.
func TestImages(t *testing.T) {
	forEachInstall(t, func(t *testing.T, in install) {
		if !in.e2e {
			checkImages(t, in)
		}
	})
}

func checkImages(t *testing.T, in install) {
	pinned := regexp.MustCompile(`^[a-z0-9.-]+(/[a-z0-9._-]+)+:v\d+\.\d+\.\d+$`)
	for _, spec := range podSpecs(t, in.ix) {
		for _, c := range spec.Containers {
			if !pinned.MatchString(c.Image) {
				t.Errorf("container %s: image %q is not pinned to a version", c.Name, c.Image)
			}
			if c.Name != driverContainer && !strings.HasPrefix(c.Image, "registry.k8s.io/sig-storage/") {
				t.Errorf("container %s: sidecar image %q is not the official one", c.Name, c.Image)
			}
			if c.ImagePullPolicy != corev1.PullIfNotPresent {
				t.Errorf("container %s: imagePullPolicy %q", c.Name, c.ImagePullPolicy)
			}
		}
	}
}

// TestE2EValuesReplaceEveryImage: the real-cluster test runs only images it
// built itself (nothing can be pulled where it runs), and keeps the kubelet
// directory and the store below its own state directory.
func TestE2EValuesReplaceEveryImage(t *testing.T) {
	n := 0
	forEachInstall(t, func(t *testing.T, in install) {
		if !in.e2e {
			return
		}
		n++
		for _, spec := range podSpecs(t, in.ix) {
			for _, c := range spec.Containers {
				if !strings.HasPrefix(c.Image, "localhost/cachegroup-e2e/") {
					t.Errorf("container %s: image %s is not one the test builds", c.Name, c.Image)
				}
			}
		}
		drv := container(t, &memberDaemonSet(t, in.ix).Spec.Template.Spec, driverContainer)
		for _, p := range []string{in.kubeletDir, hostPathOf(t, &memberDaemonSet(t, in.ix).Spec.Template.Spec, drv, mustArg(t, drv, "store"))} {
			if !strings.HasPrefix(p, "/var/lib/cachegroup-e2e/") {
				t.Errorf("the e2e install uses %s, outside the test's /var/lib/cachegroup-e2e", p)
			}
		}
	})
	if n != 1 {
		t.Errorf("%d installs of the e2e values", n)
	}
}

// TestExamples: the workload examples refer to classes and objects that exist.
func TestExamples(t *testing.T) {
	cl := installs(t)[0].ix
	snaps := map[string]bool{}
	var all []object
	for _, f := range yamlFiles(t, examples) {
		all = append(all, loadFile(t, f)...)
	}
	for _, o := range all {
		if s, ok := o.obj.(*VolumeSnapshot); ok {
			snaps[s.Name] = true
			if c := s.Spec.VolumeSnapshotClassName; c == nil {
				t.Errorf("%v names no VolumeSnapshotClass", o)
			} else if _, ok := cl.get("VolumeSnapshotClass", "", *c); !ok {
				t.Errorf("%v: VolumeSnapshotClass %s is not defined", o, *c)
			}
		}
	}
	pvcs := map[string]bool{}
	mavenMount := false
	for _, o := range all {
		switch x := o.obj.(type) {
		case *corev1.PersistentVolumeClaim:
			pvcs[x.Name] = true
			if sc := x.Spec.StorageClassName; sc == nil {
				t.Errorf("%v names no StorageClass", o)
			} else if _, ok := cl.get("StorageClass", "", *sc); !ok {
				t.Errorf("%v: StorageClass %s is not defined", o, *sc)
			}
			if ds := x.Spec.DataSource; ds != nil && (ds.Kind != "VolumeSnapshot" || !snaps[ds.Name]) {
				t.Errorf("%v: data source %s %s is not in the examples", o, ds.Kind, ds.Name)
			}
		case *corev1.Pod:
			for _, c := range x.Spec.Containers {
				for _, m := range c.VolumeMounts {
					if m.MountPath == "/root/.m2/repository" {
						mavenMount = true
					}
				}
			}
		}
	}
	for _, o := range all {
		if pod, ok := o.obj.(*corev1.Pod); ok {
			for _, v := range pod.Spec.Volumes {
				if v.PersistentVolumeClaim != nil && !pvcs[v.PersistentVolumeClaim.ClaimName] {
					t.Errorf("%v mounts claim %s, which the examples do not define", o, v.PersistentVolumeClaim.ClaimName)
				}
			}
		}
	}
	if !mavenMount {
		t.Error("no example mounts a cache at /root/.m2/repository")
	}
}
