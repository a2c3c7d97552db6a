package main

import (
	"context"
	"os"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// claimsOf returns, by PV name, "namespace/name" of the claims bound to the
// PVs of vs, when a Kubernetes API is at hand (in a pod, $KUBECONFIG or
// ~/.kube/config) and lets this tool read PVs; otherwise nothing. A volume
// is named after its PV (CreateVolume's name).
func claimsOf(ctx context.Context, vs []volume.Volume) map[string]string {
	out := map[string]string{}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		path := os.Getenv("KUBECONFIG")
		if path == "" {
			home, _ := os.UserHomeDir()
			path = filepath.Join(home, ".kube", "config")
		}
		if _, serr := os.Stat(path); serr != nil {
			return out
		}
		if cfg, err = clientcmd.BuildConfigFromFlags("", path); err != nil {
			return out
		}
	}
	cfg.Timeout = 10 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return out
	}
	want := map[string]bool{}
	for _, v := range vs {
		want[v.Name] = true
	}
	pvs, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return out
	}
	for _, pv := range pvs.Items {
		if c := pv.Spec.ClaimRef; want[pv.Name] && c != nil {
			out[pv.Name] = c.Namespace + "/" + c.Name
		}
	}
	return out
}
