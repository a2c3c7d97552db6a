package cachegroup

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// layers ranks the member's packages: each may import only packages of a
// lower rank, so that the store and trees know nothing of the group and the
// group nothing of the node tier.
var layers = map[string]int{
	"internal/files": 0, "internal/parallel": 0, "internal/flight": 0, "internal/shortmap": 0, "metrics": 0,
	"cas": 1, "tree": 2, "tree/treetest": 3, "volume": 3, "wire": 4, "wire/wiretest": 0, "group": 5, "node": 6, ".": 7,
}

func TestLayersImportOnlyDownwards(t *testing.T) {
	const module = "github.com/cachegroup/cachegroup/pkg/cachegroup"
	seen := 0
	err := filepath.WalkDir(".", func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		dir := filepath.Dir(path)
		rank, ok := layers[dir]
		if !ok {
			t.Errorf("package %s has no layer: add it to layers", dir)
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		seen++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p != module && !strings.HasPrefix(p, module+"/") {
				continue
			}
			to := strings.TrimPrefix(strings.TrimPrefix(p, module), "/")
			if to == "" {
				to = "."
			}
			if r, ok := layers[to]; !ok || r >= rank {
				t.Errorf("%s imports %s: a layer may import only layers below it", path, p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen < len(layers) {
		t.Fatalf("checked %d files", seen)
	}
}
