package group

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listers "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/rest"
)

// EndpointSlices lists the ready endpoints of a headless Service selecting
// the node plugins, watched through an informer. A member's identity is its
// endpoint's node name.
type EndpointSlices struct {
	lister    listers.EndpointSliceLister
	namespace string
	service   string
	port      string
}

// NewEndpointSlices watches the Service "namespace/name" with the in-cluster
// configuration, until ctx ends. port is the peer port members listen on.
func NewEndpointSlices(ctx context.Context, service string, port int) (*EndpointSlices, error) {
	ns, name, ok := strings.Cut(service, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("members service %q: want NAMESPACE/NAME", service)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("members service %s: %w", service, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns))
	lister := f.Discovery().V1().EndpointSlices().Lister()
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	return &EndpointSlices{lister: lister, namespace: ns, service: name, port: strconv.Itoa(port)}, nil
}

// Endpoints returns the ready endpoints that name their node.
func (e *EndpointSlices) Endpoints(context.Context) ([]Endpoint, error) {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: e.service})
	slices, err := e.lister.EndpointSlices(e.namespace).List(sel)
	if err != nil {
		return nil, err
	}
	return endpointsOf(slices, e.port), nil
}

// endpointsOf picks the ready endpoints with a node name, one per node.
func endpointsOf(slices []*discoveryv1.EndpointSlice, port string) []Endpoint {
	seen := map[string]bool{}
	var out []Endpoint
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			if ep.NodeName == nil || *ep.NodeName == "" || len(ep.Addresses) == 0 {
				continue
			}
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			if seen[*ep.NodeName] {
				continue
			}
			seen[*ep.NodeName] = true
			out = append(out, Endpoint{Name: *ep.NodeName, Addr: net.JoinHostPort(ep.Addresses[0], port)})
		}
	}
	return out
}
