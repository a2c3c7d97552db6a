package manifests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	schedulingv1 "k8s.io/api/scheduling/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

// repoRoot is the repository's top directory, relative to this package.
const repoRoot = "../.."

// VolumeSnapshotClass mirrors snapshot.storage.k8s.io/v1 VolumeSnapshotClass
// (a CRD of kubernetes-csi/external-snapshotter, not in k8s.io/api).
type VolumeSnapshotClass struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Driver            string            `json:"driver"`
	Parameters        map[string]string `json:"parameters,omitempty"`
	DeletionPolicy    string            `json:"deletionPolicy"`
}

// VolumeSnapshot mirrors snapshot.storage.k8s.io/v1 VolumeSnapshot.
type VolumeSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		Source struct {
			PersistentVolumeClaimName *string `json:"persistentVolumeClaimName,omitempty"`
			VolumeSnapshotContentName *string `json:"volumeSnapshotContentName,omitempty"`
		} `json:"source"`
		VolumeSnapshotClassName *string `json:"volumeSnapshotClassName,omitempty"`
	} `json:"spec"`
}

// Kustomization is the part of kustomize.config.k8s.io Kustomization and
// Component files that these manifests use; anything else is an error.
type Kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Components []string `json:"components,omitempty"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
	Patches []struct {
		Path   string `json:"path,omitempty"`
		Target *struct {
			Group     string `json:"group,omitempty"`
			Version   string `json:"version,omitempty"`
			Kind      string `json:"kind,omitempty"`
			Name      string `json:"name,omitempty"`
			Namespace string `json:"namespace,omitempty"`
		} `json:"target,omitempty"`
	} `json:"patches,omitempty"`
}

var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme,
		storagev1.AddToScheme, schedulingv1.AddToScheme, discoveryv1.AddToScheme, policyv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// object is one decoded YAML document.
type object struct {
	file string // relative to the repository
	gvk  schema.GroupVersionKind
	obj  metav1.Object
	raw  []byte
}

func (o object) String() string {
	return fmt.Sprintf("%s %s/%s (%s)", o.gvk.Kind, o.obj.GetNamespace(), o.obj.GetName(), o.file)
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocs returns the non-empty YAML documents of a file.
func splitDocs(b []byte) [][]byte {
	var out [][]byte
	for _, d := range docSep.Split(string(b), -1) {
		if strings.TrimSpace(stripComments(d)) != "" {
			out = append(out, []byte(d))
		}
	}
	return out
}

func stripComments(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// decodeStrict decodes one document into its typed object: unknown or
// duplicate fields, and kinds this package does not know, are errors.
func decodeStrict(doc []byte) (schema.GroupVersionKind, metav1.Object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return schema.GroupVersionKind{}, nil, err
	}
	gvk := tm.GroupVersionKind()
	var obj metav1.Object
	switch gvk {
	case schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshotClass"}:
		obj = &VolumeSnapshotClass{}
	case schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshot"}:
		obj = &VolumeSnapshot{}
	case schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}:
		obj = &ServiceMonitor{}
	case schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "PrometheusRule"}:
		obj = &PrometheusRule{}
	case schema.GroupVersionKind{Group: "cert-manager.io", Version: "v1", Kind: "Certificate"}:
		obj = &Certificate{}
	default:
		ro, err := scheme.New(gvk)
		if err != nil {
			return gvk, nil, fmt.Errorf("kind %v: %w", gvk, err)
		}
		obj = ro.(metav1.Object)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return gvk, nil, fmt.Errorf("%v %q: %w", gvk.Kind, tm.Kind, err)
	}
	if obj.GetName() == "" && gvk.Kind != "Pod" {
		return gvk, nil, fmt.Errorf("%v without a name", gvk.Kind)
	}
	return gvk, obj, nil
}

// loadFile decodes every document of a manifest file.
func loadFile(t *testing.T, rel string) []object {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	var out []object
	for i, doc := range splitDocs(b) {
		gvk, obj, err := decodeStrict(doc)
		if err != nil {
			t.Errorf("%s, document %d: %v", rel, i+1, err)
			continue
		}
		out = append(out, object{file: rel, gvk: gvk, obj: obj, raw: doc})
	}
	return out
}

// loadKustomization decodes dir/kustomization.yaml strictly.
func loadKustomization(t *testing.T, dir string) Kustomization {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k Kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	return k
}

// loadKustomize returns the objects a kustomization's resources hold, following
// resource directories recursively, with its namespace applied. Patches are not
// applied: the tests read the bases, and check overlays' patches separately.
func loadKustomize(t *testing.T, dir string) []object {
	t.Helper()
	k := loadKustomization(t, dir)
	var out []object
	for _, r := range k.Resources {
		rel := filepath.Join(dir, r)
		fi, err := os.Stat(filepath.Join(repoRoot, rel))
		if err != nil {
			t.Errorf("%s/kustomization.yaml: resource %s: %v", dir, r, err)
			continue
		}
		if fi.IsDir() {
			out = append(out, loadKustomize(t, rel)...)
		} else {
			out = append(out, loadFile(t, rel)...)
		}
	}
	if k.Namespace != "" {
		for _, o := range out {
			if namespaced(o.gvk.Kind) {
				o.obj.SetNamespace(k.Namespace)
			}
		}
	}
	return out
}

func namespaced(kind string) bool {
	switch kind {
	case "Namespace", "CSIDriver", "StorageClass", "PriorityClass", "ClusterRole", "ClusterRoleBinding",
		"VolumeSnapshotClass", "PersistentVolume", "CustomResourceDefinition":
		return false
	}
	return true
}

// yamlFiles lists the .yaml files below dir (relative to the repository).
func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			rel, _ := filepath.Rel(repoRoot, p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// index finds objects by kind, namespace and name.
type index map[string]object

func key(kind, ns, name string) string { return kind + "/" + ns + "/" + name }

func newIndex(t *testing.T, objs []object) index {
	t.Helper()
	ix := index{}
	for _, o := range objs {
		k := key(o.gvk.Kind, o.obj.GetNamespace(), o.obj.GetName())
		if prev, dup := ix[k]; dup {
			t.Errorf("%v is defined twice (also in %s)", o, prev.file)
		}
		ix[k] = o
	}
	return ix
}

func (ix index) get(kind, ns, name string) (object, bool) {
	o, ok := ix[key(kind, ns, name)]
	return o, ok
}

func (ix index) all(kind string) []object {
	var out []object
	for _, o := range ix {
		if o.gvk.Kind == kind {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// mustOne returns the only object of a kind.
func (ix index) mustOne(t *testing.T, kind string) object {
	t.Helper()
	all := ix.all(kind)
	if len(all) != 1 {
		t.Fatalf("want exactly one %s, have %d", kind, len(all))
	}
	return all[0]
}
