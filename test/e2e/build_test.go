package e2e

import (
	"time"

	icluster "github.com/cachegroup/cachegroup/internal/cluster"
)

// buildModules is the real build's module list (internal/cluster): a few
// dozen widely used modules at fixed versions.
var buildModules = icluster.BuildModules

// goCmd runs the go command with args in dir (its module cache at
// modcache), bounded by three minutes, and returns its combined output.
func goCmd(goBin, dir, modcache string, offline bool, args ...string) (string, error) {
	return icluster.GoCmd(goBin, dir, modcache, offline, args...)
}

// goModDownload writes the real build's go.mod into a fresh dir and runs
// `go mod download` there with its module cache at modcache (in the proxy's
// absence with offline), returning how long it took.
func goModDownload(goBin, dir, modcache string, offline bool) (time.Duration, error) {
	return icluster.GoModDownload(goBin, dir, modcache, offline, buildModules)
}

// probeProxy checks, within 20 seconds, that the module proxy answers.
func probeProxy(goBin, dir string) error { return icluster.ProbeProxy(goBin, dir) }
