package manifests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// chartDir is the Helm chart, relative to the repository.
const chartDir = "deploy/helm/cachegroup"

// install is one set of objects a user would apply: the kustomize manifests,
// or the chart rendered with some values. Every rule of this package holds
// for each.
type install struct {
	name string
	ix   index
	// What the values say, for the rules that depend on them.
	kubeletDir string
	peerSecret string // the Secret holding the peer secret; "" without one
	tlsSecret  string // the Secret holding the peer TLS files; "" without TLS
	e2e        bool   // the real-cluster test's install: local images
}

// valueSet is one rendering of the chart that the tests check.
type valueSet struct {
	name string
	args []string // helm template arguments: -f FILE, --set ...
	install
}

// valueSets are the chart's renderings the tests check: the defaults, the
// real-cluster test's values, and sets that turn on what the defaults leave
// off (mTLS through cert-manager, monitoring, another kubelet directory, every
// node a member, existing Secrets, custom classes).
var valueSets = []valueSet{
	{name: "chart defaults", install: install{kubeletDir: "/var/lib/kubelet", peerSecret: "cachegroup-peer"}},
	{name: "chart e2e values", args: []string{"-f", filepath.Join(repoRoot, e2eDir, "values.yaml")},
		install: install{kubeletDir: "/var/lib/cachegroup-e2e/kubelet", peerSecret: "cachegroup-peer", e2e: true}},
	{name: "chart mTLS and monitoring", args: []string{"--set", strings.Join([]string{
		"peer.secret.enabled=false", "peer.tls.enabled=true", "peer.tls.certManager.enabled=true",
		"peer.tls.certManager.issuerRef.name=cachegroup-ca", "peer.tls.certManager.dnsNames={node-a,node-b}",
		"metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true", "metrics.dashboard.enabled=true",
		"kubeletDir=/var/lib/k0s/kubelet", "group=builds", "replicas=3", "members.cacheSize=1.5Ti"}, ",")},
		install: install{kubeletDir: "/var/lib/k0s/kubelet", tlsSecret: "cachegroup-peer-tls"}},
	{name: "chart all members, existing Secrets", args: []string{"-f", filepath.Join("testdata", "all-members.yaml")},
		install: install{kubeletDir: "/var/lib/kubelet", peerSecret: "ci-peer", tlsSecret: "ci-peer-tls"}},
}

var (
	chartOnce    sync.Once
	chartRenders []install
	chartErr     error
)

// installs returns the kustomize manifests and every rendering of the chart
// (rendered once per test binary), decoded strictly.
func installs(t *testing.T) []install {
	t.Helper()
	kix := newIndex(t, append(loadKustomize(t, baseDir), loadKustomize(t, classesDir)...))
	out := []install{{name: "kustomize", ix: kix, kubeletDir: "/var/lib/kubelet", peerSecret: "cachegroup-peer"}}
	chartOnce.Do(func() {
		for _, vs := range valueSets {
			objs, err := renderChart(vs.args...)
			if err == nil {
				var ix index
				if ix, err = newIndexErr(objs); err == nil {
					in := vs.install
					in.name, in.ix = vs.name, ix
					chartRenders = append(chartRenders, in)
					continue
				}
			}
			chartErr = fmt.Errorf("%s: %w", vs.name, err)
			return
		}
	})
	if chartErr != nil {
		t.Fatal(chartErr)
	}
	return append(out, chartRenders...)
}

// forEachInstall runs check as a subtest for every install.
func forEachInstall(t *testing.T, check func(t *testing.T, in install)) {
	t.Helper()
	for _, in := range installs(t) {
		t.Run(in.name, func(t *testing.T) { check(t, in) })
	}
}

// helmBinary finds helm: $HELM, the PATH, or where go install puts it.
func helmBinary() (string, error) {
	if h := os.Getenv("HELM"); h != "" {
		return h, nil
	}
	if p, err := exec.LookPath("helm"); err == nil {
		return p, nil
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			p := filepath.Join(dir, "bin", "helm")
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("no helm binary: .ci/run installs it (go install helm.sh/helm/v3/cmd/helm@VERSION); or set HELM")
}

// helmTemplate runs helm template on the chart as release "cachegroup" in
// namespace cachegroup-system and returns its output.
func helmTemplate(args ...string) ([]byte, error) {
	helm, err := helmBinary()
	if err != nil {
		return nil, err
	}
	// The kube version only satisfies the chart's kubeVersion.
	cmd := exec.Command(helm, append([]string{"template", "cachegroup", filepath.Join(repoRoot, chartDir),
		"--namespace", "cachegroup-system", "--kube-version", "1.34.0"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("helm template %v: %v: %s", args, err, stderr.String())
	}
	return out, nil
}

var sourceLine = regexp.MustCompile(`(?m)^# Source: (\S+)`)

// renderChart renders the chart and decodes every document strictly; each
// object's file is its template.
func renderChart(args ...string) ([]object, error) {
	out, err := helmTemplate(args...)
	if err != nil {
		return nil, err
	}
	var objs []object
	for i, doc := range splitDocs(out) {
		src := "chart"
		if m := sourceLine.FindSubmatch(doc); m != nil {
			src = string(m[1])
		}
		gvk, obj, err := decodeStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%s (document %d): %w", src, i+1, err)
		}
		objs = append(objs, object{file: src, gvk: gvk, obj: obj, raw: doc})
	}
	return objs, nil
}

func newIndexErr(objs []object) (index, error) {
	ix := index{}
	for _, o := range objs {
		k := key(o.gvk.Kind, o.obj.GetNamespace(), o.obj.GetName())
		if prev, dup := ix[k]; dup {
			return nil, fmt.Errorf("%v is defined twice (also in %s)", o, prev.file)
		}
		ix[k] = o
	}
	return ix, nil
}

// The kinds of CRDs the chart may render, mirrored with only the fields it
// uses, so that decoding stays strict.

// ServiceMonitor mirrors monitoring.coreos.com/v1 ServiceMonitor.
type ServiceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port        string `json:"port"`
			Path        string `json:"path,omitempty"`
			Interval    string `json:"interval,omitempty"`
			Relabelings []struct {
				SourceLabels []string `json:"sourceLabels,omitempty"`
				TargetLabel  string   `json:"targetLabel,omitempty"`
			} `json:"relabelings,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// RuleGroups is a PrometheusRule's spec, and the chart's files/alerts.yaml.
type RuleGroups struct {
	Groups []struct {
		Name     string `json:"name"`
		Interval string `json:"interval,omitempty"`
		Rules    []struct {
			Alert       string            `json:"alert,omitempty"`
			Record      string            `json:"record,omitempty"`
			Expr        string            `json:"expr"`
			For         string            `json:"for,omitempty"`
			Labels      map[string]string `json:"labels,omitempty"`
			Annotations map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

// PrometheusRule mirrors monitoring.coreos.com/v1 PrometheusRule.
type PrometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              RuleGroups `json:"spec"`
}

// Certificate mirrors cert-manager.io/v1 Certificate.
type Certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		SecretName  string   `json:"secretName"`
		CommonName  string   `json:"commonName,omitempty"`
		DNSNames    []string `json:"dnsNames,omitempty"`
		Duration    string   `json:"duration,omitempty"`
		RenewBefore string   `json:"renewBefore,omitempty"`
		Usages      []string `json:"usages,omitempty"`
		PrivateKey  struct {
			Algorithm string `json:"algorithm,omitempty"`
			Size      int    `json:"size,omitempty"`
		} `json:"privateKey"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind,omitempty"`
			Group string `json:"group,omitempty"`
		} `json:"issuerRef"`
	} `json:"spec"`
}
