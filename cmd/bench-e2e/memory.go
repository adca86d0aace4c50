package main

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// eventTimePerEvent is how far event time moves per event applied in the memory run. A
// real deployment sees months pass; here 100 000 events cover about 127 days, past the
// KeyPackage lifetime (84 days), delete grace (7) and tombstone retention (30) and past
// the 30-day journal retention, so the state has turned over once by the first sample
// and 1 000 000 events (≈ 3.5 years) are its steady state, not more history.
const eventTimePerEvent = 110 * time.Second

// memSample is what the memory run reads at one mark, with the load paused and the
// worker idle.
type memSample struct {
	events            uint64        // input-stream messages applied
	eventTime         time.Duration // event time covered
	heapInuse         uint64        // after a forced GC (debug.FreeOSMemory)
	rss, rssAnon      uint64        // VmRSS and RssAnon of this process: the worker and the load
	natsRSS, natsDisk uint64        // the nats-server child's VmRSS and JetStream files
	dbSize            int64
	freePages         int
	pendingPages      int
	freelistBytes     int
	pageSize          int
	journal, kps, ids int
}

// simClock is event time that steps once a second by eventTimePerEvent × the events
// applied in that second. It stays put between steps, so an upload and its ack normally
// carry the same time and the 5-minute upload timeout does not fire for every
// KeyPackage in flight.
type simClock struct {
	start time.Time
	off   atomic.Int64
}

func (c *simClock) now() time.Time { return c.start.Add(time.Duration(c.off.Load())) }

// memoryRun drives claims, the refills they cause (generated + upload acks) and a tick
// a second through a worker with default settings over pools pools, pausing at each mark
// (events applied) to sample memory and the database. heapProfile, when set, receives a
// heap profile at the last mark.
func memoryRun(pools, target int, marks []uint64, heapProfile string) ([]memSample, error) {
	clk := &simClock{start: time.Now().UTC().Truncate(time.Second)}
	ns, err := startNATSChild()
	if err != nil {
		return nil, err
	}
	defer ns.stop()
	e, err := startEnv(envOptions{pools: pools, target: target, clock: clk.now, queue: true, natsURL: ns.url})
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.waitFull(pools, target, 10*time.Minute); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // the clock
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last := e.w.AppliedSeq()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				now := e.w.AppliedSeq()
				clk.off.Add(int64(now-last) * int64(eventTimePerEvent))
				last = now
			}
		}
	}()
	var paused atomic.Bool
	claimErr := make(chan error, 1)
	go func() {
		_, err := e.claimLoop(ctx, 0, &paused)
		claimErr <- err
	}()

	var out []memSample
	start, lastLog := time.Now(), time.Now()
	for _, mark := range marks {
		for e.w.AppliedSeq() < mark {
			select {
			case err := <-claimErr:
				return out, fmt.Errorf("claims: %v", err)
			case <-time.After(100 * time.Millisecond):
			}
			if time.Since(lastLog) > 15*time.Second {
				lastLog = time.Now()
				n := e.w.AppliedSeq()
				fmt.Fprintf(os.Stderr, "memory: %d events applied, %.0f /s\n", n, float64(n)/time.Since(start).Seconds())
			}
			if time.Since(start) > 20*time.Minute {
				return out, fmt.Errorf("only %d of %d events applied after 20 minutes", e.w.AppliedSeq(), mark)
			}
		}
		paused.Store(true)
		if err := e.waitIdle(2 * time.Minute); err != nil {
			return out, err
		}
		s, err := sampleMemory(e, clk, ns)
		if err != nil {
			return out, err
		}
		out = append(out, s)
		fmt.Fprintf(os.Stderr, "memory: %d events, %.0f days: heap %s, RSS %s (anon %s), db %s, %d free + %d pending pages, freelist %d B, journal %d, KeyPackages %d\n",
			s.events, s.eventTime.Hours()/24, mib(s.heapInuse), mib(s.rss), mib(s.rssAnon), mib(uint64(s.dbSize)), s.freePages, s.pendingPages, s.freelistBytes, s.journal, s.kps)
		if mark == marks[len(marks)-1] && heapProfile != "" {
			if err := writeHeapProfile(heapProfile); err != nil {
				return out, err
			}
		}
		paused.Store(false)
	}
	return out, nil
}

func sampleMemory(e *env, clk *simClock, ns *natsChild) (memSample, error) {
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s := memSample{events: e.w.AppliedSeq(), eventTime: time.Duration(clk.off.Load()), heapInuse: ms.HeapInuse}
	var err error
	if s.rss, s.rssAnon, err = procRSS("/proc/self/status"); err != nil {
		return s, err
	}
	if s.natsRSS, err = ns.rss(); err != nil {
		return s, err
	}
	if s.natsDisk, err = dirSize(ns.dir); err != nil {
		return s, err
	}
	st, err := e.w.Store().Stats()
	if err != nil {
		return s, err
	}
	fi, err := os.Stat(st.Path)
	if err != nil {
		return s, err
	}
	s.dbSize, s.freePages, s.pageSize = fi.Size(), st.FreePages, st.PageSize
	s.pendingPages, s.freelistBytes = st.PendingPages, st.FreelistBytes
	s.journal, s.kps, s.ids = st.Journal, st.KeyPackages, st.Seen
	return s, nil
}

// procRSS reads VmRSS and RssAnon (bytes) from a /proc/PID/status file: RSS includes
// the pages of the bbolt file the process has mapped and touched, RssAnon does not.
func procRSS(status string) (rss, anon uint64, err error) {
	f, err := os.Open(status)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "RssAnon") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/self/status %s: %w", k, err)
		}
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			anon = kb << 10
		}
	}
	return rss, anon, sc.Err()
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("heap").WriteTo(f, 0)
}

func dirSize(dir string) (uint64, error) {
	var n uint64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += uint64(fi.Size())
		}
		return err
	})
	return n, err
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
