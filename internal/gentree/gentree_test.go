package gentree

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func tinySpec() Spec {
	return Spec{
		Seed:         7,
		Files:        300,
		Dirs:         60,
		TotalBytes:   2 << 20,
		MaxJarBytes:  256 << 10,
		BigFileBytes: 1 << 20,
	}
}

func TestGenerateDeterministic(t *testing.T) {
	spec := tinySpec()
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	stA, manA, err := GenerateManifest(a, spec)
	if err != nil {
		t.Fatal(err)
	}
	stB, err := Generate(b, spec)
	if err != nil {
		t.Fatal(err)
	}
	if stA != stB {
		t.Fatalf("stats differ: %+v vs %+v", stA, stB)
	}
	scanA, err := Scan(a)
	if err != nil {
		t.Fatal(err)
	}
	scanB, err := Scan(b)
	if err != nil {
		t.Fatal(err)
	}
	if d := manA.Digest(); d != scanA.Digest() {
		t.Fatalf("manifest recorded while writing (%s) differs from the tree scanned (%s)", d, scanA.Digest())
	}
	if diffs, n := Compare(manA, scanA, 10); n > 0 {
		t.Fatalf("manifest recorded while writing differs from the tree (%d): %v", n, diffs)
	}
	if scanA.Digest() != scanB.Digest() {
		diffs, n := Compare(scanA, scanB, 10)
		t.Fatalf("same seed, different trees (%d differences): %v", n, diffs)
	}

	// Another seed gives another tree.
	spec.Seed++
	c := filepath.Join(t.TempDir(), "c")
	if _, err := Generate(c, spec); err != nil {
		t.Fatal(err)
	}
	scanC, err := Scan(c)
	if err != nil {
		t.Fatal(err)
	}
	if scanC.Digest() == scanA.Digest() {
		t.Fatal("different seeds gave the same tree")
	}
}

func TestGenerateCounts(t *testing.T) {
	spec := tinySpec()
	dir := t.TempDir()
	st, err := Generate(dir, spec)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Scan(dir)
	if err != nil {
		t.Fatal(err)
	}
	files, dirs, bytes := m.Totals()
	if files != spec.Files || st.Files != spec.Files {
		t.Errorf("files: scanned %d, reported %d, want %d", files, st.Files, spec.Files)
	}
	if dirs != spec.Dirs || st.Dirs != spec.Dirs {
		t.Errorf("dirs: scanned %d, reported %d, want %d", dirs, st.Dirs, spec.Dirs)
	}
	if bytes != st.Bytes {
		t.Errorf("bytes: scanned %d, reported %d", bytes, st.Bytes)
	}
	rest := bytes - spec.BigFileBytes
	if lo, hi := spec.TotalBytes*99/100, spec.TotalBytes*101/100; rest < lo || rest > hi {
		t.Errorf("bytes without the large file: %d, want about %d", rest, spec.TotalBytes)
	}
	if st.BigFile == "" || m[st.BigFile].Size != spec.BigFileBytes {
		t.Errorf("large file %q: %+v", st.BigFile, m[st.BigFile])
	}
	if st.LargestJar > spec.MaxJarBytes {
		t.Errorf("largest jar %d > %d", st.LargestJar, spec.MaxJarBytes)
	}
	var poms, sha1s, remotes, metas int
	for p, e := range m {
		switch {
		case e.Dir:
			if e.Mode.Perm() != modeDir {
				t.Errorf("%s: mode %o", p, e.Mode.Perm())
			}
			continue
		case e.Mode.Perm() != modeFile:
			t.Errorf("%s: mode %o", p, e.Mode.Perm())
		}
		switch base := filepath.Base(p); {
		case strings.HasSuffix(base, ".pom"):
			poms++
		case strings.HasSuffix(base, ".sha1"):
			sha1s++
		case base == "_remote.repositories":
			remotes++
		case base == "maven-metadata-central.xml":
			metas++
		}
	}
	if poms == 0 || sha1s == 0 || remotes == 0 || metas == 0 || st.Jars == 0 {
		t.Errorf("layout: %d poms, %d sha1, %d _remote.repositories, %d metadata, %d jars", poms, sha1s, remotes, metas, st.Jars)
	}
	plan, err := PlanStats(spec)
	if err != nil || plan != st {
		t.Errorf("PlanStats = %+v, %v; want %+v", plan, err, st)
	}
}

func TestGenerateDefaultSpecPlan(t *testing.T) {
	spec := DefaultSpec()
	st, err := PlanStats(spec)
	if err != nil {
		t.Fatal(err)
	}
	if st.Files != spec.Files || st.Dirs != spec.Dirs {
		t.Errorf("default plan: %d files in %d dirs, want %d in %d", st.Files, st.Dirs, spec.Files, spec.Dirs)
	}
	if rest := st.Bytes - spec.BigFileBytes; rest < spec.TotalBytes*99/100 || rest > spec.TotalBytes*101/100 {
		t.Errorf("default plan: %d bytes without the large file, want about %d", rest, spec.TotalBytes)
	}
	if st.SmallFiles < st.Files/2 {
		t.Errorf("default plan: only %d of %d files are small", st.SmallFiles, st.Files)
	}
	t.Logf("default plan: %+v", st)
}

func TestGenerateRefusesNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Generate(dir, tinySpec()); err == nil {
		t.Fatal("Generate into a non-empty directory succeeded")
	}
}

func TestCompare(t *testing.T) {
	want := Manifest{"a": {Size: 1}, "b": {Dir: true, Mode: 0o755}, "c": {Size: 2}}
	got := Manifest{"a": {Size: 1}, "b": {Dir: true, Mode: 0o755}, "c": {Size: 3}, "d": {}}
	diffs, n := Compare(want, got, 0)
	if n != 2 || len(diffs) != 2 {
		t.Fatalf("Compare = %v (%d), want a size difference and an unexpected entry", diffs, n)
	}
}
