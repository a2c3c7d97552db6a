package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// runCollect collects the garbage of the chosen members now, one after the
// other, or with --dry-run only finds it.
func runCollect(ctx context.Context, t *tool, args []string) error {
	members, err := t.chosen(ctx, args)
	if err != nil {
		return err
	}
	var reports []wire.Collection
	for _, m := range members {
		c, err := t.member.AdminCollect(ctx, wire.CollectRequest{Member: m, DryRun: t.o.dryRun})
		if err != nil {
			return fmt.Errorf("gc %s: %w", m, err)
		}
		reports = append(reports, c)
	}
	if t.o.output == "json" {
		return t.json(reports)
	}
	w := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "MEMBER\tROOTS\tTREES\tBLOBS\tGARBAGE\tGARBAGE BYTES\tDELETED\tFREED")
	for _, c := range reports {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%s\t%d\t%s\n", c.Member, c.Roots, c.Trees, c.Held, c.Garbage, size(c.Bytes), c.Deleted, size(c.Freed))
	}
	return w.Flush()
}
