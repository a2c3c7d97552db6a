package gentree

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// fileKind selects how a file's bytes look.
type fileKind int

const (
	kindBinary fileKind = iota // raw pseudo-random bytes (.jar, .zip)
	kindText                   // printable lines (.pom, .xml, .properties)
	kindHex                    // lowercase hex digits (.sha1)
)

// planFile is one file to write.
type planFile struct {
	path string
	size int64
	kind fileKind
	jar  bool
}

// plan is the complete, deterministic layout of a tree.
type plan struct {
	dirs    []string // parents before children
	files   []planFile
	bigFile string
}

// version is one version directory of an artifact.
type version struct {
	dir      string // slash path of the version directory
	artifact string
	version  string
}

// bundle is a group of files added together (a .jar and its .sha1).
type bundle []planFile

var (
	topLevels = []string{"org", "org", "org", "com", "com", "com", "io", "io", "net", "dev"}
	orgNames  = []string{
		"apache", "springframework", "google", "fasterxml", "eclipse", "jetbrains",
		"codehaus", "slf4j", "junit", "hibernate", "netty", "projectreactor",
		"micrometer", "squareup", "ow2", "glassfish", "jboss", "mockito", "assertj",
		"testcontainers", "yaml", "antlr", "checkerframework", "errorprone", "grpc",
		"opentelemetry", "prometheus", "zaxxer", "vaadin", "quarkus", "vertx",
		"typesafe", "scala-lang", "kotlin", "jackson", "guava", "protobuf", "apiguardian",
		"opentest4j", "hamcrest", "objenesis", "bytebuddy", "commons", "plexus", "sonatype",
	}
	subNames = []string{
		"maven", "plugins", "commons", "core", "boot", "data", "security", "cloud",
		"shared", "wagon", "resolver", "surefire", "doxia", "reporting", "extensions",
		"module", "dataformat", "datatype", "jaxrs", "jersey", "annotation", "logging",
		"http", "client", "server", "api", "util", "json", "xml", "web", "test",
		"platform", "jupiter", "vintage", "engine", "runtime", "compiler", "tools",
	}
	artifactHeads = []string{
		"commons", "jackson", "spring", "maven", "plexus", "netty", "guava", "junit",
		"slf4j", "log4j", "hibernate", "aws", "reactor", "okhttp", "kotlin", "micrometer",
		"jakarta", "grpc", "protobuf", "httpclient", "asm", "byte-buddy", "mockito",
		"snakeyaml", "antlr4", "checker", "error-prone", "opentelemetry", "jetty", "tomcat",
	}
	artifactTails = []string{
		"core", "api", "impl", "common", "utils", "parent", "plugin", "annotations",
		"runtime", "databind", "client", "server", "test", "bom", "spi", "io", "lang3",
		"codec", "compress", "collections", "context", "beans", "web", "aop", "jdbc",
		"model", "artifact", "resolver", "interpolation", "classworlds", "buffer",
		"transport", "handler", "resolver-dns", "stdlib", "logging", "metrics", "engine",
	}
	syllables = []string{
		"ka", "lo", "mi", "ra", "to", "ve", "zu", "ne", "pa", "si", "do", "fe",
		"gri", "bal", "tor", "mun", "sel", "vox", "quin", "dra", "lex", "nor",
	}
	versionSuffixes = []string{"", "", "", "", "", "", ".Final", ".RELEASE", "-jre", ".v20230101"}
)

// word returns a synthetic lowercase word.
func (r *rng) word() string {
	n := 2 + r.intn(2)
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString(syllables[r.intn(len(syllables))])
	}
	return b.String()
}

func (r *rng) pick(list []string) string { return list[r.intn(len(list))] }

// lognormal returns exp(ln(median) + sigma*N(0,1)).
func (r *rng) lognormal(median, sigma float64) float64 {
	return math.Exp(math.Log(median) + sigma*r.normal())
}

func newPlan(spec Spec) (*plan, error) {
	if err := ValidateSpec(spec); err != nil {
		return nil, err
	}
	maxJar := spec.MaxJarBytes
	if maxJar <= 0 {
		maxJar = 8 << 20
	}
	r := &rng{s: splitmix(spec.Seed ^ 0x6d6176656e)}
	p := &plan{}
	dirSet := map[string]bool{}
	addDir := func(d string) {
		if !dirSet[d] {
			dirSet[d] = true
			p.dirs = append(p.dirs, d)
		}
	}

	// Group directories: about 9% of all directories.
	groupTarget := int(math.Round(float64(spec.Dirs) * 0.09))
	if groupTarget < 2 {
		groupTarget = 2
	}
	var groups []string
	groupSet := map[string]bool{}
	for tries := 0; len(p.dirs) < groupTarget && tries < 100*spec.Dirs+1000; tries++ {
		parts := []string{r.pick(topLevels)}
		if r.intn(10) < 7 {
			parts = append(parts, r.pick(orgNames))
		} else {
			parts = append(parts, r.word())
		}
		switch x := r.intn(10); {
		case x < 5:
			parts = append(parts, r.pick(subNames))
		case x < 7:
			parts = append(parts, r.pick(subNames), r.pick(subNames))
		}
		gid := joinPath(parts...)
		if groupSet[gid] {
			continue
		}
		// Stop before overshooting the target by more than one directory.
		added := 0
		for i := range parts {
			if !dirSet[joinPath(parts[:i+1]...)] {
				added++
			}
		}
		if len(groups) > 0 && len(p.dirs)+added > groupTarget+1 {
			continue
		}
		for i := range parts {
			addDir(joinPath(parts[:i+1]...))
		}
		groupSet[gid] = true
		groups = append(groups, gid)
	}

	// Artifact directories: about 14% of all directories, at least one per group.
	artTarget := int(math.Round(float64(spec.Dirs) * 0.14))
	if artTarget < len(groups) {
		artTarget = len(groups)
	}
	type artifact struct {
		dir, name string
	}
	var artifacts []artifact
	newArtifact := func(g string) {
		for tries := 0; ; tries++ {
			var name string
			switch {
			case tries < 20 && r.intn(4) > 0:
				name = r.pick(artifactHeads) + "-" + r.pick(artifactTails)
			case tries < 20:
				name = r.word() + "-" + r.pick(artifactTails)
			default:
				name = fmt.Sprintf("%s-%s%d", r.word(), r.pick(artifactTails), tries)
			}
			d := g + "/" + name
			if dirSet[d] {
				continue
			}
			addDir(d)
			artifacts = append(artifacts, artifact{dir: d, name: name})
			return
		}
	}
	for _, g := range groups {
		newArtifact(g)
	}
	for len(artifacts) < artTarget {
		newArtifact(groups[r.intn(len(groups))])
	}

	// Version directories: the rest, at least one per artifact, skewed.
	nv := spec.Dirs - len(p.dirs)
	if nv < len(artifacts) {
		nv = len(artifacts)
	}
	counts := make([]int, len(artifacts))
	weights := make([]float64, len(artifacts))
	total := 0.0
	for i := range counts {
		counts[i] = 1
		weights[i] = r.lognormal(1, 1)
		total += weights[i]
	}
	cum := make([]float64, len(weights))
	acc := 0.0
	for i, w := range weights {
		acc += w / total
		cum[i] = acc
	}
	for i := len(artifacts); i < nv; i++ {
		x := r.float()
		j := sort.SearchFloat64s(cum, x)
		if j >= len(counts) {
			j = len(counts) - 1
		}
		counts[j]++
	}
	var versions []version
	for i, a := range artifacts {
		major, minor, patch := r.intn(6), r.intn(12), r.intn(5)
		suffix := r.pick(versionSuffixes)
		for k := 0; k < counts[i]; k++ {
			v := fmt.Sprintf("%d.%d.%d%s", major, minor, patch, suffix)
			d := a.dir + "/" + v
			addDir(d)
			versions = append(versions, version{dir: d, artifact: a.name, version: v})
			switch x := r.intn(10); {
			case x < 6:
				patch++
			case x < 9:
				minor, patch = minor+1, 0
			default:
				major, minor, patch = major+1, 0, 0
			}
		}
	}

	// Mandatory files: metadata per artifact; pom, pom.sha1 and
	// _remote.repositories per version.
	text := func(path string, size int64) planFile { return planFile{path: path, size: size, kind: kindText} }
	sha1 := func(path string) planFile { return planFile{path: path, size: 40, kind: kindHex} }
	for _, a := range artifacts {
		p.files = append(p.files, text(a.dir+"/maven-metadata-central.xml", int64(400+r.intn(2600))))
	}
	for _, v := range versions {
		base := v.dir + "/" + v.artifact + "-" + v.version
		pom := int64(clampF(r.lognormal(2500, 0.5), 800, 16000))
		p.files = append(p.files,
			text(base+".pom", pom),
			sha1(base+".pom.sha1"),
			text(v.dir+"/_remote.repositories", int64(160+r.intn(120))))
	}

	// Optional files, in order of how common they are, until the file
	// count is reached.
	need := spec.Files - len(p.files)
	if spec.BigFileBytes > 0 {
		need--
	}
	jarBundle := func(v version, classifier string, median float64) bundle {
		name := v.dir + "/" + v.artifact + "-" + v.version + classifier + ".jar"
		size := int64(r.lognormal(median, 1.6))
		return bundle{{path: name, size: size, kind: kindBinary, jar: true}, sha1(name + ".sha1")}
	}
	perm := func(n int) []int {
		idx := make([]int, n)
		for i := range idx {
			idx[i] = i
		}
		for i := n - 1; i > 0; i-- {
			j := r.intn(i + 1)
			idx[i], idx[j] = idx[j], idx[i]
		}
		return idx
	}
	order := perm(len(versions))
	var withJar []version
	var candidates []bundle
	for k, i := range order {
		if k*100 < len(order)*92 {
			candidates = append(candidates, jarBundle(versions[i], "", 40<<10))
			withJar = append(withJar, versions[i])
		}
	}
	for k, v := range withJar {
		if k%2 == 0 {
			candidates = append(candidates, jarBundle(v, "-sources", 20<<10))
		}
	}
	for _, a := range artifacts {
		candidates = append(candidates, bundle{text(a.dir+"/resolver-status.properties", int64(120+r.intn(200)))})
	}
	for k, i := range order {
		if k%5 == 0 {
			v := versions[i]
			candidates = append(candidates, bundle{text(v.dir+"/"+v.artifact+"-"+v.version+".pom.lastUpdated", int64(200+r.intn(400)))})
		}
	}
	for k, v := range withJar {
		if k%3 == 0 {
			candidates = append(candidates, jarBundle(v, "-javadoc", 60<<10))
		}
	}
	for _, v := range withJar {
		candidates = append(candidates, jarBundle(v, "-tests", 20<<10))
	}
	for k, v := range withJar {
		if k%2 == 1 {
			candidates = append(candidates, jarBundle(v, "-sources", 20<<10))
		}
	}
	for k, i := range order {
		if k%5 != 0 {
			v := versions[i]
			candidates = append(candidates, bundle{text(v.dir+"/"+v.artifact+"-"+v.version+".pom.lastUpdated", int64(200+r.intn(400)))})
		}
	}
	for _, b := range candidates {
		if need <= 0 {
			break
		}
		if len(b) <= need {
			p.files = append(p.files, b...)
			need -= len(b)
		}
	}

	// Scale the jars so that all files but the large one add up to
	// TotalBytes.
	var small int64
	var jars []int
	for i, f := range p.files {
		if f.jar {
			jars = append(jars, i)
		} else {
			small += f.size
		}
	}
	base := make([]int64, len(jars))
	for k, i := range jars {
		base[k] = p.files[i].size
	}
	sizes := func(factor float64) int64 {
		var sum int64
		for _, b := range base {
			sum += int64(clampF(float64(b)*factor, 1024, float64(maxJar)))
		}
		return sum
	}
	budget := spec.TotalBytes - small
	lo, hi := 0.0, 1.0
	for sizes(hi) < budget && hi < 1e9 {
		hi *= 2
	}
	for it := 0; it < 100; it++ {
		mid := (lo + hi) / 2
		if sizes(mid) < budget {
			lo = mid
		} else {
			hi = mid
		}
	}
	for k, i := range jars {
		p.files[i].size = int64(clampF(float64(base[k])*hi, 1024, float64(maxJar)))
	}

	// The large file: a distribution archive in one version directory.
	if spec.BigFileBytes > 0 {
		v := versions[r.intn(len(versions))]
		p.bigFile = v.dir + "/" + v.artifact + "-" + v.version + "-bin.zip"
		p.files = append(p.files, planFile{path: p.bigFile, size: spec.BigFileBytes, kind: kindBinary})
	}

	// Write in path order, as a sequential download would leave them.
	sort.Slice(p.files, func(i, j int) bool { return p.files[i].path < p.files[j].path })
	return p, nil
}

func clampF(x, lo, hi float64) float64 {
	return math.Max(lo, math.Min(hi, math.Round(x)))
}

// stats summarises the plan.
func (p *plan) stats() Stats {
	st := Stats{Files: len(p.files), Dirs: len(p.dirs), BigFile: p.bigFile}
	for _, f := range p.files {
		st.Bytes += f.size
		if f.size <= 8<<10 {
			st.SmallFiles++
		}
		if f.jar {
			st.Jars++
			if f.size > st.LargestJar {
				st.LargestJar = f.size
			}
		}
	}
	return st
}
