// Package standins holds stand-ins, used only by the real-cluster test, for the
// node-driver-registrar and livenessprobe sidecars and the pause image: the Go module
// proxy does not serve those, and images cannot be pulled where the test runs. Each
// takes the official program's flags that deploy/kubernetes passes, so the test
// overlay only swaps images.
package standins
