// Package parallel runs a function over the items of a slice on a bounded
// number of goroutines. It imports nothing of the project.
package parallel

import (
	"errors"
	"sync"
)

// Do calls fn for every item on at most workers goroutines, each with its own
// state from newState (a buffer, say), and joins their errors.
func Do[T, S any](items []T, workers int, newState func() S, fn func(T, S) error) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	work := make(chan T)
	for range min(workers, len(items)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := newState()
			for it := range work {
				if err := fn(it, st); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, it := range items {
		work <- it
	}
	close(work)
	wg.Wait()
	return errors.Join(errs...)
}

// NoState is the state of workers that need none.
func NoState() struct{} { return struct{}{} }
