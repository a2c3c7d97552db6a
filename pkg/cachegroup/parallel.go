package cachegroup

import (
	"errors"
	"sync"
)

// parallel calls fn for every item on at most workers goroutines, each with
// its own state from newState (a buffer, say), and joins their errors.
func parallel[T, S any](items []T, workers int, newState func() S, fn func(T, S) error) error {
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
