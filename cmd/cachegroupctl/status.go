package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// runStatus prints every member's status, as the member reached sees the
// group.
func runStatus(ctx context.Context, t *tool, _ []string) error {
	sts, err := t.member.AdminStatus(ctx, true)
	if err != nil {
		return err
	}
	if t.o.output == "json" {
		return t.json(sts)
	}
	if len(sts) == 0 {
		return fmt.Errorf("member %s answered no status", t.o.member)
	}
	self := sts[0]
	byName := map[string]wire.Status{}
	for _, st := range sts {
		byName[st.Name] = st
	}
	fmt.Fprintf(t.out, "group %s, R=%d, grace period %v, as seen by %s (%s)\n\n", self.Group, self.Replicas,
		time.Duration(self.GraceSeconds*float64(time.Second)).Round(time.Second), self.Name, self.Version)
	w := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "MEMBER\tSTATE\tWEIGHT\tSTORE USED\tCACHE SIZE\tOWNED\tOWNED BLOBS\tBELOW R\tOUTBOX\tOLDEST")
	for _, mb := range self.Members {
		state := "up"
		switch {
		case mb.Gone:
			state = "gone " + ago(mb.DownSeconds)
		case !mb.Live:
			state = "down " + ago(mb.DownSeconds)
		}
		st, ok := byName[mb.Name]
		if !ok || st.Error != "" {
			fmt.Fprintf(w, "%s\t%s\t%g\t-\t-\t-\t-\t-\t-\t-\n", mb.Name, state, mb.Weight)
			continue
		}
		cache := "none"
		if st.CacheSize > 0 {
			cache = size(st.CacheSize)
		}
		oldest := "-"
		if st.Outbox > 0 {
			oldest = ago(st.OutboxOldestSeconds)
		}
		fmt.Fprintf(w, "%s\t%s\t%g\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", mb.Name, state, mb.Weight, size(st.StoreUsed), cache,
			size(st.OwnedBytes), st.OwnedBlobs, st.BelowR, st.Outbox, oldest)
	}
	w.Flush()
	for _, st := range sts {
		if st.Error != "" {
			fmt.Fprintf(t.out, "\n%s: %s", st.Name, st.Error)
		}
	}
	return nil
}

// volumeRow is one volume as the volumes command shows it.
type volumeRow struct {
	volume.Volume
	// PVC is "namespace/name" of the claim bound to the volume's PV, when
	// known.
	PVC       string            `json:"pvc,omitempty"`
	Snapshots []volume.Snapshot `json:"snapshots"`
}

// runVolumes prints the group's volumes with their snapshots.
func runVolumes(ctx context.Context, t *tool, _ []string) error {
	l, err := t.member.AdminVolumes(ctx)
	if err != nil {
		return err
	}
	rows := make([]volumeRow, len(l.Volumes))
	byID := map[string]*volumeRow{}
	for i, v := range l.Volumes {
		rows[i] = volumeRow{Volume: v, Snapshots: []volume.Snapshot{}}
		byID[v.ID] = &rows[i]
	}
	for _, s := range l.Snapshots {
		if r := byID[s.VolumeID]; r != nil {
			r.Snapshots = append(r.Snapshots, s)
		}
	}
	claims := claimsOf(ctx, l.Volumes)
	for i := range rows {
		rows[i].PVC = claims[rows[i].Name]
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	if t.o.output == "json" {
		return t.json(rows)
	}
	w := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tNAME\tPVC\tSIZE\tQUOTA\tUSE\tFILES\tGENERATION\tLAST COMMIT\tSNAPSHOTS")
	for _, r := range rows {
		pvc := r.PVC
		if pvc == "" {
			pvc = "-"
		}
		use := "-"
		if r.Quota > 0 {
			use = fmt.Sprintf("%.0f%%", 100*float64(r.Size)/float64(r.Quota))
		}
		last := "never"
		if r.Generation > 0 {
			last = ago(time.Since(r.Updated).Seconds())
		}
		var snaps []string
		for _, s := range r.Snapshots {
			snaps = append(snaps, s.Name)
		}
		sn := "-"
		if len(snaps) > 0 {
			sn = fmt.Sprintf("%d (%s)", len(snaps), strings.Join(first(snaps, 3), ", "))
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", r.ID, r.Name, pvc, size(r.Size), size(r.Quota), use,
			r.Count, r.Generation, last, sn)
	}
	return w.Flush()
}

// runWarm has a member's node hydrate a volume's head.
func runWarm(ctx context.Context, t *tool, args []string) error {
	res, err := t.member.AdminWarm(ctx, wire.WarmRequest{Node: args[0], Volume: volumeID(args[1])})
	if err != nil {
		return err
	}
	if t.o.output == "json" {
		return t.json(res)
	}
	how := "warm"
	if !res.Done {
		how = "still hydrating (it goes on on the node)"
	}
	fmt.Fprintf(t.out, "%s: volume %s generation %d (%d files, %s) is %s after %.1fs\n", res.Node, res.Volume,
		res.Generation, res.Files, size(res.Bytes), how, res.Seconds)
	return nil
}

// runVerify re-hashes a member's store (or every member's, one after the
// other) and reports the copies found corrupt and repaired.
func runVerify(ctx context.Context, t *tool, args []string) error {
	members, err := t.chosen(ctx, args)
	if err != nil {
		return err
	}
	var reports []wire.VerifyState
	for _, m := range members {
		st, err := t.member.AdminVerify(ctx, m, true)
		for err == nil && st.Running {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(500 * time.Millisecond):
			}
			st, err = t.member.AdminVerify(ctx, m, false)
		}
		if err != nil {
			return fmt.Errorf("verify %s: %w", m, err)
		}
		reports = append(reports, st)
	}
	if t.o.output == "json" {
		if err := t.json(reports); err != nil {
			return err
		}
	} else {
		w := tabwriter.NewWriter(t.out, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "MEMBER\tCHECKED\tBYTES\tCORRUPT\tREPAIRED\tDROPPED\tERRORS\tTOOK")
		for _, r := range reports {
			fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t%v\n", r.Member, r.Checked, size(r.Bytes), r.CorruptCount, r.Repaired,
				r.Dropped, len(r.Errors), r.Finished.Sub(r.Started).Round(time.Millisecond))
		}
		w.Flush()
		for _, r := range reports {
			for _, d := range r.Corrupt {
				fmt.Fprintf(t.out, "%s: corrupt copy of blob %s\n", r.Member, d)
			}
			for _, e := range r.Errors {
				fmt.Fprintf(t.out, "%s: %s\n", r.Member, e)
			}
		}
	}
	for _, r := range reports {
		if len(r.Errors) > 0 {
			return fmt.Errorf("%s: %d copies could not be checked or repaired", r.Member, len(r.Errors))
		}
	}
	return nil
}

// size writes n bytes in binary units.
func size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	f, i := float64(n), -1
	for f >= unit && i < 5 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f%ciB", f, "KMGTPE"[i])
}

// ago writes a number of seconds as a short duration.
func ago(sec float64) string {
	d := time.Duration(sec * float64(time.Second))
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "...")
	}
	return s
}

// chosen returns the members a command is about: the one named in args,
// every one with --all, or else the one reached.
func (t *tool) chosen(ctx context.Context, args []string) ([]string, error) {
	if !t.o.all {
		if len(args) == 1 {
			return args, nil
		}
		return []string{t.o.member}, nil
	}
	sts, err := t.member.AdminStatus(ctx, false)
	if err != nil {
		return nil, err
	}
	var members []string
	for _, mb := range sts[0].Members {
		members = append(members, mb.Name)
	}
	return members, nil
}
