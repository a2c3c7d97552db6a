package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// curve is one line of a chart: y over x, dashed or not.
type curve struct {
	name   string
	xs, ys []float64
	color  int // index into plotutil's palette
	dashed bool
	dots   bool // points, not a line
}

// chart draws curves into a PNG file below dir and returns the plot.
func chart(dir, file, title, ylabel string, curves []curve) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "seconds since start"
	p.Y.Label.Text = ylabel
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	top := 0.0
	for _, c := range curves {
		for _, y := range c.ys {
			top = max(top, y)
		}
	}
	p.Y.Max = math.Max(top*1.35, 1) // room for the legend above the data
	for _, c := range curves {
		if len(c.xs) == 0 {
			continue
		}
		pts := make(plotter.XYs, len(c.xs))
		for i := range c.xs {
			pts[i].X, pts[i].Y = c.xs[i], c.ys[i]
		}
		col := plotutil.Color(c.color)
		if c.dots {
			sc, err := plotter.NewScatter(pts)
			if err != nil {
				return nil, err
			}
			sc.GlyphStyle.Color = col
			sc.GlyphStyle.Radius = vg.Points(1.5)
			sc.GlyphStyle.Shape = draw.CircleGlyph{}
			p.Add(sc)
			if c.name != "" {
				p.Legend.Add(c.name, sc)
			}
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = col
		l.Width = vg.Points(1.2)
		if c.dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(l)
		if c.name != "" {
			p.Legend.Add(c.name, l)
		}
	}
	if err := p.Save(10*vg.Inch, 4.5*vg.Inch, filepath.Join(dir, file)); err != nil {
		return nil, fmt.Errorf("plot %s: %w", file, err)
	}
	return p, nil
}

// dashboard draws plots two a row into one PNG file below dir.
func dashboard(dir, file string, plots []*plot.Plot) error {
	const cols = 2
	rows := (len(plots) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for i, p := range plots {
		grid[i/cols][i%cols] = p
	}
	img := vgimg.New(20*vg.Inch, vg.Length(rows)*4.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter, PadY: vg.Millimeter,
		PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(4)}
	canvases := plot.Align(grid, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[i/cols][i%cols])
	}
	f, err := os.Create(filepath.Join(dir, file))
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot %s: %w", file, err)
	}
	return f.Close()
}

// plots draws the run's charts into dir and returns the files written.
func (s *soak) plots(dir string, ss []sample, bs []buildRecord) ([]string, error) {
	var files []string
	const mb = 1 << 20
	perNode := func(f func(sample) float64) []curve {
		var cs []curve
		for i, n := range s.nodes {
			ns := byNode(ss, n.m.Name)
			c := curve{name: n.m.Name, color: i}
			for _, sm := range ns {
				c.xs = append(c.xs, sm.t)
				c.ys = append(c.ys, f(sm))
			}
			cs = append(cs, c)
		}
		return cs
	}
	end := 0.0
	if len(ss) > 0 {
		end = ss[len(ss)-1].t
	}
	flat := func(name string, y float64, col int) curve {
		return curve{name: name, xs: []float64{0, end}, ys: []float64{y, y}, color: col, dashed: true}
	}
	limits := []curve{flat(fmt.Sprintf("member cache size %s", s.c.memberCache), float64(s.c.memberBytes)/mb, 0)}
	if s.c.clientBytes != s.c.memberBytes {
		limits = append(limits, flat(fmt.Sprintf("client cache size %s", s.c.clientCache), float64(s.c.clientBytes)/mb, 3))
	}
	var drawn []*plot.Plot
	do := func(file, title, ylabel string, cs []curve) error {
		p, err := chart(dir, file, title, ylabel, cs)
		if err != nil {
			return err
		}
		files = append(files, file)
		drawn = append(drawn, p)
		return nil
	}
	if err := do("store.png", "Store on disk per node (solid) against its cache size (dashed)", "MiB",
		append(perNode(func(sm sample) float64 { return float64(sm.storeDisk) / mb }), limits...)); err != nil {
		return files, err
	}
	if err := do("store-accounted.png", "Store as the member counts it (cachegroup_store_bytes)", "MiB",
		append(perNode(func(sm sample) float64 { return sm.metric("cachegroup_store_bytes") / mb }), limits...)); err != nil {
		return files, err
	}
	if err := do("outbox.png", "Outbox on disk per node (bound: the node's cache size, dashed)", "MiB",
		append(perNode(func(sm sample) float64 { return float64(sm.outboxBytes) / mb }), limits...)); err != nil {
		return files, err
	}
	var commits []curve
	for i, res := range commitResults(ss) {
		c := curve{name: res, color: i}
		c.xs, c.ys = totalOverNodes(s, ss, "cachegroup_commits_total", "result="+res)
		commits = append(commits, c)
	}
	if err := do("commits.png", "Outbox entries processed by result, all nodes (cachegroup_commits_total; failed: an attempt to be retried)", "entries", commits); err != nil {
		return files, err
	}
	var freed []curve
	for i, c := range counters(ss, reclaim) {
		cv := curve{name: c.String(), color: i}
		cv.xs, cv.ys = totalOverNodes(s, ss, c.name, c.labels...)
		freed = append(freed, cv)
	}
	if err := do("reclaim.png", "Eviction, collection and dropped commits, all nodes (every such cachegroup_*_total)", "count", freed); err != nil {
		return files, err
	}
	ok, failed := curve{name: "pod started", color: 2, dots: true}, curve{name: "mount failed", color: 0, dots: true}
	for _, b := range bs {
		c := &ok
		if len(b.err) > 6 && b.err[:6] == "mount:" {
			c = &failed
		}
		c.xs = append(c.xs, b.at)
		c.ys = append(c.ys, b.podStart.Seconds())
	}
	if err := do("podstart.png", "Pod start: NodeStageVolume + NodePublishVolume", "seconds", []curve{ok, failed}); err != nil {
		return files, err
	}
	if err := do("rss.png", "Driver RSS (VmRSS)", "MiB",
		perNode(func(sm sample) float64 { return float64(sm.rss) / mb })); err != nil {
		return files, err
	}
	if err := do("goroutines.png", "Driver goroutines (go_goroutines)", "goroutines",
		perNode(func(sm sample) float64 { return sm.metric("go_goroutines") })); err != nil {
		return files, err
	}
	if err := dashboard(dir, "soak.png", drawn); err != nil {
		return files, err
	}
	return append([]string{"soak.png (all of them)"}, files...), nil
}

// totalOverNodes returns, at each sampling time, the sum over nodes of the
// cumulative counter name.
func totalOverNodes(s *soak, ss []sample, name string, labels ...string) ([]float64, []float64) {
	var xs, ys []float64
	for _, n := range s.nodes {
		ns := byNode(ss, n.m.Name)
		cum := cumulative(ns, name, labels...)
		for i := range ns {
			if len(xs) <= i {
				xs = append(xs, ns[i].t)
				ys = append(ys, 0)
			}
			ys[i] += cum[i]
		}
	}
	return xs, ys
}
