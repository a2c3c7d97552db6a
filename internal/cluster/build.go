package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// BuildDriver builds cmd/cachegroup-csi of the module the working directory
// is in into dir, so a run always uses the current code, and returns the
// binary's path and how long the build took.
func BuildDriver(dir string) (string, time.Duration, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", 0, fmt.Errorf("no go command to build the driver with: %w", err)
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", 0, err
	}
	bin := filepath.Join(dir, "cachegroup-csi")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/cachegroup-csi")
	cmd.Dir = root
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", 0, fmt.Errorf("build the driver: %v\n%s", err, out)
	}
	return bin, time.Since(start), nil
}

// ModuleRoot returns the directory of the go.mod above the working
// directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
	}
}

// BuildModules is the real build's module list: a few dozen widely used
// modules at fixed versions (about 90 MiB and 4,500 files in GOMODCACHE,
// with the go.mod files of their dependencies).
var BuildModules = []string{
	"github.com/BurntSushi/toml v1.4.0",
	"github.com/cespare/xxhash/v2 v2.3.0",
	"github.com/cpuguy83/go-md2man/v2 v2.0.6",
	"github.com/davecgh/go-spew v1.1.1",
	"github.com/fsnotify/fsnotify v1.8.0",
	"github.com/go-logr/logr v1.4.2",
	"github.com/google/go-cmp v0.7.0",
	"github.com/google/uuid v1.6.0",
	"github.com/gorilla/mux v1.8.1",
	"github.com/inconshreveable/mousetrap v1.1.0",
	"github.com/json-iterator/go v1.1.12",
	"github.com/kr/pretty v0.3.1",
	"github.com/kr/text v0.2.0",
	"github.com/mattn/go-isatty v0.0.20",
	"github.com/modern-go/concurrent v0.0.0-20180306012644-bacd9c7ef1dd",
	"github.com/modern-go/reflect2 v1.0.2",
	"github.com/pkg/errors v0.9.1",
	"github.com/pmezard/go-difflib v1.0.0",
	"github.com/rogpeppe/go-internal v1.13.1",
	"github.com/russross/blackfriday/v2 v2.1.0",
	"github.com/sirupsen/logrus v1.9.3",
	"github.com/spf13/cobra v1.9.1",
	"github.com/spf13/pflag v1.0.6",
	"github.com/stretchr/objx v0.5.2",
	"github.com/stretchr/testify v1.10.0",
	"golang.org/x/mod v0.23.0",
	"golang.org/x/net v0.35.0",
	"golang.org/x/sync v0.11.0",
	"golang.org/x/sys v0.30.0",
	"golang.org/x/term v0.29.0",
	"golang.org/x/text v0.22.0",
	"golang.org/x/time v0.10.0",
	"gopkg.in/check.v1 v1.0.0-20201130134442-10cb98267c6c",
	"gopkg.in/yaml.v2 v2.4.0",
	"gopkg.in/yaml.v3 v3.0.1",
	"k8s.io/klog/v2 v2.130.1",
}

// SmallBuildModules is a short module list for quick runs: a handful of
// small modules without dependencies.
var SmallBuildModules = []string{
	"github.com/google/uuid v1.6.0",
	"github.com/pkg/errors v0.9.1",
	"github.com/cespare/xxhash/v2 v2.3.0",
}

// GoMod is the go.mod of the real build's project requiring modules.
func GoMod(modules []string) string {
	return "module example.com/cachegroup-e2e-build\n\ngo 1.22\n\nrequire (\n\t" +
		strings.Join(modules, "\n\t") + "\n)\n"
}

// GoEnv is this process's environment for a go command with its module
// cache at modcache: read-write cache directories (so the cache can be
// committed and removed), no toolchain switch, no workspace, and with
// offline the module proxy turned off.
func GoEnv(modcache string, offline bool) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOMODCACHE", "GOFLAGS", "GOTOOLCHAIN", "GOWORK":
			continue
		case "GOPROXY":
			if offline {
				continue
			}
		}
		env = append(env, kv)
	}
	env = append(env, "GOMODCACHE="+modcache, "GOFLAGS=-modcacherw", "GOTOOLCHAIN=local", "GOWORK=off")
	if offline {
		env = append(env, "GOPROXY=off")
	}
	return env
}

// GoCmd runs the go command with args in dir (its module cache at
// modcache), bounded by three minutes, and returns its combined output.
func GoCmd(goBin, dir, modcache string, offline bool, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	cmd.Env = GoEnv(modcache, offline)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// GoModDownload writes the go.mod requiring modules into a fresh dir and
// runs `go mod download` there with its module cache at modcache (in the
// proxy's absence with offline), returning how long it took.
func GoModDownload(goBin, dir, modcache string, offline bool, modules []string) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(GoMod(modules)), 0o644); err != nil {
		return 0, err
	}
	start := time.Now()
	_, err := GoCmd(goBin, dir, modcache, offline, "mod", "download")
	return time.Since(start), err
}

// ProbeProxy checks, within 20 seconds, that the module proxy answers: it
// resolves one module of the build into a throwaway cache below dir.
func ProbeProxy(goBin, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "list", "-m", "-json", "golang.org/x/text@v0.22.0")
	cmd.Dir = dir
	cmd.Env = GoEnv(filepath.Join(dir, "modcache"), false)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go list -m golang.org/x/text@v0.22.0 (GOPROXY=%s): %v: %s", GoProxy(), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// GoProxy returns the go command's GOPROXY setting.
func GoProxy() string {
	out, err := exec.Command("go", "env", "GOPROXY").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// CountTree returns the regular files and their bytes below dir.
func CountTree(dir string) (files int, bytes int64, err error) {
	err = filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if fi.Mode().IsRegular() {
			files++
			bytes += fi.Size()
		}
		return nil
	})
	return files, bytes, err
}
