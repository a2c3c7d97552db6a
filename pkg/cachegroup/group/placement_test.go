package group

import (
	"math"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"
)

func TestEndpointSlicesReadyWithNodeNames(t *testing.T) {
	yes, no := true, false
	node := func(s string) *string { return &s }
	slices := []*discoveryv1.EndpointSlice{{Endpoints: []discoveryv1.Endpoint{
		{Addresses: []string{"10.0.0.1"}, NodeName: node("n1"), Conditions: discoveryv1.EndpointConditions{Ready: &yes}},
		{Addresses: []string{"10.0.0.2"}, NodeName: node("n2"), Conditions: discoveryv1.EndpointConditions{Ready: &no}},
		{Addresses: []string{"10.0.0.3"}},
		{Addresses: []string{"10.0.0.4"}, NodeName: node("n1")},
	}}}
	eps := endpointsOf(slices, "7600")
	if len(eps) != 1 || eps[0].Name != "n1" || eps[0].Addr != "10.0.0.1:7600" {
		t.Fatalf("endpoints %v", eps)
	}
}

// TestPlacementMovesOnlyTheNewMembersShare checks, on a simulated 100-member
// ring, that a joining member takes about 1/(n+1) of the blob copies and
// nothing else moves.
func TestPlacementMovesOnlyTheNewMembersShare(t *testing.T) {
	moved, ideal := MovedFraction(100, 2, 20000)
	if math.Abs(moved-ideal) > 0.1*ideal+0.002 {
		t.Fatalf("moved %.4f of copies, ideal %.4f", moved, ideal)
	}
}
