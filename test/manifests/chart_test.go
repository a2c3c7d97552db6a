package manifests

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestKustomizeIsGeneratedFromTheChart: deploy/kubernetes/base and classes are
// exactly what deploy/kubernetes/generate.sh renders from the chart now, so
// the chart is the one source and kustomize users get the same objects.
func TestKustomizeIsGeneratedFromTheChart(t *testing.T) {
	helm, err := helmBinary()
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(repoRoot, deployDir, "generate.sh"), out)
	cmd.Env = append(os.Environ(), "HELM="+helm)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("generate.sh: %v\n%s", err, b)
	}
	for _, dir := range []string{"base", "classes"} {
		want, _ := filepath.Glob(filepath.Join(out, dir, "*"))
		have, _ := filepath.Glob(filepath.Join(repoRoot, deployDir, dir, "*"))
		names := func(ps []string) []string {
			var n []string
			for _, p := range ps {
				n = append(n, filepath.Base(p))
			}
			return n
		}
		if !slices.Equal(names(want), names(have)) {
			t.Errorf("%s/%s holds %v, the chart renders %v: run bash %s/generate.sh", deployDir, dir, names(have), names(want), deployDir)
			continue
		}
		for _, p := range want {
			w, _ := os.ReadFile(p)
			h, _ := os.ReadFile(filepath.Join(repoRoot, deployDir, dir, filepath.Base(p)))
			if !bytes.Equal(w, h) {
				t.Errorf("%s/%s/%s differs from the chart's rendering: run bash %s/generate.sh", deployDir, dir, filepath.Base(p), deployDir)
			}
		}
	}
}

// node is a node's labels, for scheduling checks.
type node map[string]string

// schedules says whether a DaemonSet's pods may run on node n: its
// nodeSelector and its required node affinity (In, NotIn, Exists,
// DoesNotExist: what the chart uses).
func schedules(t *testing.T, ds *appsv1.DaemonSet, n node) bool {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !labels.SelectorFromSet(spec.NodeSelector).Matches(labels.Set(n)) {
		return false
	}
	if spec.Affinity == nil || spec.Affinity.NodeAffinity == nil || spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return true
	}
	for _, term := range spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		ok := true
		for _, e := range term.MatchExpressions {
			v, has := n[e.Key]
			switch e.Operator {
			case corev1.NodeSelectorOpIn:
				ok = ok && has && slices.Contains(e.Values, v)
			case corev1.NodeSelectorOpNotIn:
				ok = ok && !(has && slices.Contains(e.Values, v))
			case corev1.NodeSelectorOpExists:
				ok = ok && has
			case corev1.NodeSelectorOpDoesNotExist:
				ok = ok && !has
			default:
				t.Fatalf("%s: node selector operator %s", ds.Name, e.Operator)
			}
		}
		if ok && (len(term.MatchExpressions) > 0 || len(term.MatchFields) > 0) {
			return true
		}
	}
	return false
}

// TestMembersAndClientsSplitTheNodes: every Linux node runs exactly one node
// plugin, a member where its labels match the members' selector and a client
// everywhere else; no other node runs one. With no member selector every
// Linux node is a member.
func TestMembersAndClientsSplitTheNodes(t *testing.T) {
	linux := func(extra ...string) node {
		n := node{"kubernetes.io/os": "linux", "kubernetes.io/hostname": "n"}
		for i := 0; i+1 < len(extra); i += 2 {
			n[extra[i]] = extra[i+1]
		}
		return n
	}
	check := func(t *testing.T, ix index, memberLabels []string) {
		member, client := memberDaemonSet(t, ix), clientDaemonSet(ix)
		cases := []struct {
			what string
			n    node
			want string // "member", "client" or ""
		}{
			{"an unlabelled Linux node", linux(), "client"},
			{"a Windows node", node{"kubernetes.io/os": "windows"}, ""},
			{"a Linux node with the member labels", linux(memberLabels...), "member"},
		}
		if len(memberLabels) == 0 {
			cases[0].want = "member"
		}
		if len(memberLabels) >= 4 { // two labels or more
			// Only some of the labels: not a member.
			cases = append(cases, struct {
				what string
				n    node
				want string
			}{"a Linux node with some member labels", linux(memberLabels[:2]...), "client"})
		}
		for _, c := range cases {
			got := ""
			if schedules(t, member, c.n) {
				got = "member"
			}
			if client != nil && schedules(t, client, c.n) {
				if got != "" {
					got = "both"
				} else {
					got = "client"
				}
			}
			if got != c.want {
				t.Errorf("%s (%v) runs %q, want %q", c.what, c.n, got, c.want)
			}
		}
	}
	forEachInstall(t, func(t *testing.T, in install) {
		sel := memberDaemonSet(t, in.ix).Spec.Template.Spec.NodeSelector
		var ls []string
		for k, v := range sel {
			if k != "kubernetes.io/os" {
				ls = append(ls, k, v)
			}
		}
		check(t, in.ix, ls)
	})
	t.Run("two member labels", func(t *testing.T) {
		objs, err := renderChart("--set", "members.nodeSelector.pool=cache")
		if err != nil {
			t.Fatal(err)
		}
		ix, err := newIndexErr(objs)
		if err != nil {
			t.Fatal(err)
		}
		check(t, ix, []string{"cachegroup.io/member", "true", "pool", "cache"})
	})
}

// TestChartPeerSecret: by default the chart makes the peer Secret (random,
// long enough for the driver); with existingSecret it makes none; without
// any way for members to authenticate it refuses to render.
func TestChartPeerSecret(t *testing.T) {
	for _, in := range installs(t) {
		o, ok := in.ix.get("Secret", systemNamespace, "cachegroup-peer")
		switch in.name {
		case "chart defaults", "chart e2e values":
			if !ok {
				t.Errorf("%s: no Secret cachegroup-peer", in.name)
				continue
			}
			s := o.obj.(*corev1.Secret)
			if len(s.Data["secret"]) < 32 {
				t.Errorf("%s: peer secret of %d bytes", in.name, len(s.Data["secret"]))
			}
		default:
			if ok {
				t.Errorf("%s: renders Secret cachegroup-peer", in.name)
			}
		}
	}
	// Two installs get different secrets.
	a, errA := helmTemplate("--show-only", "templates/peer-secret.yaml")
	b, errB := helmTemplate("--show-only", "templates/peer-secret.yaml")
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if bytes.Equal(a, b) {
		t.Error("two renderings made the same peer secret")
	}
	for _, bad := range [][]string{
		{"--set", "peer.secret.enabled=false"},
		{"--set", "peer.tls.enabled=true"},
		{"--set", "peer.tls.enabled=true,peer.tls.certManager.enabled=true"},
		{"--set", "replicas=0"},
	} {
		if _, err := helmTemplate(bad...); err == nil {
			t.Errorf("helm template %v renders", bad)
		}
	}
}

// TestChartMutualTLS: with cert-manager the chart's Certificate fills the
// Secret every pod mounts, names the given nodes and the controller, and
// serves both ends of a connection; the controller is known by that name.
func TestChartMutualTLS(t *testing.T) {
	n := 0
	for _, in := range installs(t) {
		o, ok := in.ix.get("Certificate", systemNamespace, "cachegroup-peer")
		if !ok {
			continue
		}
		n++
		c := o.obj.(*Certificate)
		if c.Spec.SecretName != in.tlsSecret {
			t.Errorf("%s: Certificate fills Secret %s, pods mount %s", in.name, c.Spec.SecretName, in.tlsSecret)
		}
		for _, name := range []string{"node-a", "node-b", "cachegroup-controller"} {
			if !slices.Contains(c.Spec.DNSNames, name) {
				t.Errorf("%s: Certificate does not name %s: %v", in.name, name, c.Spec.DNSNames)
			}
		}
		if !slices.Contains(c.Spec.Usages, "client auth") || !slices.Contains(c.Spec.Usages, "server auth") {
			t.Errorf("%s: Certificate usages %v", in.name, c.Spec.Usages)
		}
		if c.Spec.IssuerRef.Name == "" {
			t.Errorf("%s: Certificate without an issuer", in.name)
		}
		drv := container(t, &controllerDeployment(t, in.ix).Spec.Template.Spec, driverContainer)
		if id := mustArg(t, drv, "node-id"); id != "cachegroup-controller" {
			t.Errorf("%s: with TLS the controller is --node-id=%s, its certificate names cachegroup-controller", in.name, id)
		}
	}
	if n != 1 {
		t.Errorf("%d renderings with a Certificate, want 1", n)
	}
}

// selects says whether a label selector matches labels ls.
func selects(t *testing.T, sel map[string]string, ls map[string]string) bool {
	t.Helper()
	return len(sel) > 0 && labels.SelectorFromSet(sel).Matches(labels.Set(ls))
}

// TestMetricsServices: the node plugins' and the controller's metrics ports
// are behind Services whose targets are ports the driver containers expose,
// and the ServiceMonitor (when on) scrapes exactly those Services.
func TestMetricsServices(t *testing.T) {
	forEachInstall(t, func(t *testing.T, in install) {
		ix := in.ix
		want := map[string]*corev1.PodSpec{}
		dep := controllerDeployment(t, ix)
		metricsSvcs := map[string]*corev1.Service{}
		for _, o := range ix.all("Service") {
			svc := o.obj.(*corev1.Service)
			if svc.Labels["cachegroup.io/metrics"] == "true" {
				metricsSvcs[svc.Name] = svc
			}
		}
		if in.name == "chart all members, existing Secrets" {
			if len(metricsSvcs) != 0 {
				t.Errorf("metrics.service.enabled=false renders %d metrics Services", len(metricsSvcs))
			}
			return
		}
		want["cachegroup-node-metrics"] = &memberDaemonSet(t, ix).Spec.Template.Spec
		want["cachegroup-controller-metrics"] = &dep.Spec.Template.Spec
		for name, spec := range want {
			svc, ok := metricsSvcs[name]
			if !ok {
				t.Errorf("no metrics Service %s", name)
				continue
			}
			drv := container(t, spec, driverContainer)
			addr := mustArg(t, drv, "metrics-address")
			for _, p := range svc.Spec.Ports {
				i := slices.IndexFunc(drv.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.TargetPort.String() })
				if i < 0 {
					t.Errorf("%s targets port %s, which the driver does not expose", name, p.TargetPort.String())
				} else if !strings.HasSuffix(addr, ":"+p.TargetPort.String()) && !strings.HasSuffix(addr, ":"+itoa(drv.Ports[i].ContainerPort)) {
					t.Errorf("%s targets port %d, the driver serves metrics on %s", name, drv.Ports[i].ContainerPort, addr)
				}
			}
		}
		// Each metrics Service selects the pods it is for.
		if svc := metricsSvcs["cachegroup-controller-metrics"]; svc != nil && !selects(t, svc.Spec.Selector, dep.Spec.Template.Labels) {
			t.Error("cachegroup-controller-metrics does not select the controller's pods")
		}
		if svc := metricsSvcs["cachegroup-node-metrics"]; svc != nil {
			for _, ds := range nodeDaemonSets(t, ix) {
				if !selects(t, svc.Spec.Selector, ds.Spec.Template.Labels) {
					t.Errorf("cachegroup-node-metrics does not select %s's pods", ds.Name)
				}
			}
			if selects(t, svc.Spec.Selector, dep.Spec.Template.Labels) {
				t.Error("cachegroup-node-metrics selects the controller's pods")
			}
		}
		for _, o := range ix.all("ServiceMonitor") {
			sm := o.obj.(*ServiceMonitor)
			for _, svc := range ix.all("Service") {
				s := svc.obj.(*corev1.Service)
				_, isMetrics := metricsSvcs[s.Name]
				if got := selects(t, sm.Spec.Selector.MatchLabels, s.Labels); got != isMetrics {
					t.Errorf("ServiceMonitor selects Service %s: %v, want %v", s.Name, got, isMetrics)
				}
			}
			for _, e := range sm.Spec.Endpoints {
				for _, s := range metricsSvcs {
					if !slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == e.Port }) {
						t.Errorf("ServiceMonitor scrapes port %s, which Service %s has not", e.Port, s.Name)
					}
				}
			}
		}
	})
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }

// TestChartMonitoringFiles: the PrometheusRule carries files/alerts.yaml as
// its spec, and the dashboard ConfigMap files/dashboard.json, labelled for
// Grafana's sidecar; both only when asked for.
func TestChartMonitoringFiles(t *testing.T) {
	alerts, err := os.ReadFile(filepath.Join(repoRoot, chartDir, "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var want RuleGroups
	if err := yaml.UnmarshalStrict(alerts, &want); err != nil {
		t.Fatalf("files/alerts.yaml: %v", err)
	}
	if len(want.Groups) == 0 || len(want.Groups[0].Rules) == 0 {
		t.Fatal("files/alerts.yaml has no rules")
	}
	dashboard, err := os.ReadFile(filepath.Join(repoRoot, chartDir, "files", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string            `json:"title"`
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(dashboard, &dash); err != nil || dash.Title == "" || len(dash.Panels) == 0 {
		t.Fatalf("files/dashboard.json: not a dashboard with panels (%v)", err)
	}
	n := 0
	for _, in := range installs(t) {
		rules, dashboards := in.ix.all("PrometheusRule"), 0
		for _, o := range in.ix.all("ConfigMap") {
			cm := o.obj.(*corev1.ConfigMap)
			if cm.Labels["grafana_dashboard"] == "" {
				t.Errorf("%s: ConfigMap %s without the grafana_dashboard label", in.name, cm.Name)
			}
			if !json.Valid([]byte(cm.Data["cachegroup.json"])) || strings.TrimSpace(cm.Data["cachegroup.json"]) != strings.TrimSpace(string(dashboard)) {
				t.Errorf("%s: ConfigMap %s does not hold files/dashboard.json", in.name, cm.Name)
			}
			dashboards++
		}
		for _, o := range rules {
			got, _ := json.Marshal(o.obj.(*PrometheusRule).Spec)
			exp, _ := json.Marshal(want)
			if !bytes.Equal(got, exp) {
				t.Errorf("%s: PrometheusRule spec is not files/alerts.yaml", in.name)
			}
		}
		if len(rules) > 0 || dashboards > 0 {
			n++
			if len(rules) != 1 || dashboards != 1 || len(in.ix.all("ServiceMonitor")) != 1 {
				t.Errorf("%s: %d PrometheusRules, %d dashboards, want one each", in.name, len(rules), dashboards)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d renderings with monitoring, want 1 (the defaults leave it off)", n)
	}
}

// TestControllerDisruptionBudget: a budget over the controller's pods, and
// only them, leaves one running through a drain.
func TestControllerDisruptionBudget(t *testing.T) {
	forEachInstall(t, func(t *testing.T, in install) {
		pdbs := in.ix.all("PodDisruptionBudget")
		if in.name == "chart all members, existing Secrets" {
			if len(pdbs) != 0 {
				t.Error("controller.podDisruptionBudget.enabled=false renders a budget")
			}
			return
		}
		if len(pdbs) != 1 {
			t.Fatalf("%d PodDisruptionBudgets, want the controller's", len(pdbs))
		}
		pdb := pdbs[0].obj.(*policyv1.PodDisruptionBudget)
		dep := controllerDeployment(t, in.ix)
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
			t.Errorf("budget %s does not select the controller's pods (%v)", pdb.Name, err)
		}
		for _, ds := range nodeDaemonSets(t, in.ix) {
			if sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
				t.Errorf("budget %s selects %s's pods", pdb.Name, ds.Name)
			}
		}
		if pdb.Spec.MaxUnavailable == nil && pdb.Spec.MinAvailable == nil {
			t.Errorf("budget %s has no bound", pdb.Name)
		}
	})
}

// TestPeerSecretIsBase64 guards the generated secret's encoding: Secret data
// decodes to the bytes the driver reads.
func TestPeerSecretIsBase64(t *testing.T) {
	out, err := helmTemplate("--show-only", "templates/peer-secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var s struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(out, &s); err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(s.Data["secret"])
	if err != nil || len(b) < 16 {
		t.Errorf("peer secret %q: %v, %d bytes", s.Data["secret"], err, len(b))
	}
}

// TestHelmVersionAgrees: .ci/run installs, and the real-cluster test
// builds, the same helm.
func TestHelmVersionAgrees(t *testing.T) {
	ci, err := os.ReadFile(filepath.Join(repoRoot, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(filepath.Join(repoRoot, e2eDir, "env.sh"))
	if err != nil {
		t.Fatal(err)
	}
	ciV := regexp.MustCompile(`helm\.sh/helm/v3/cmd/helm@(v[0-9.]+)`).FindSubmatch(ci)
	envV := regexp.MustCompile(`HELM_VERSION=\$\{HELM_VERSION:-(v[0-9.]+)\}`).FindSubmatch(env)
	if ciV == nil || envV == nil || string(ciV[1]) != string(envV[1]) {
		t.Errorf(".ci/run installs helm %q, test/e2e-k8s/env.sh builds %q", ciV, envV)
	}
}

// TestLicense: the repository carries the full Apache License 2.0, as the
// Kubernetes CSI projects do, and the chart says so.
func TestLicense(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "LICENSE"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{"Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
		"9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS", "APPENDIX: How to apply the Apache License to your work."} {
		if !strings.Contains(text, want) {
			t.Errorf("LICENSE lacks %q: not the full Apache License 2.0", want)
		}
	}
	chart, err := os.ReadFile(filepath.Join(repoRoot, chartDir, "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(chart), "artifacthub.io/license: Apache-2.0") {
		t.Error("Chart.yaml does not name its license")
	}
}
