package node

import (
	"runtime"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// I/O priority of the idle class (linux/ioprio.h), for ioprio_set.
const (
	ioprioWhoProcess = 1
	ioprioClassIdle  = 3
	ioprioClassShift = 13
)

// idle runs f on a thread of its own at the lowest CPU priority (nice 19)
// and in the idle I/O class, and waits for it: for the node's own work
// that no pod waits for, so that pods starting meanwhile get the cores.
// The thread ends with f, taking its priority along; threads the runtime
// starts meanwhile come from its template thread, not from this one. (Only
// for work that is mostly system calls, which hand the runtime's P back
// while they run: a nice-19 thread descheduled in Go code holds its P.)
func idle(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		tid := unix.Gettid()
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, 19); err != nil {
			klog.V(2).InfoS("Lower a background thread's CPU priority", "err", err)
		}
		if _, _, errno := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), ioprioClassIdle<<ioprioClassShift); errno != 0 {
			klog.V(2).InfoS("Lower a background thread's I/O priority", "err", errno)
		}
		f()
	}()
	<-done
}
