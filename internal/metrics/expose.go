package metrics

import (
	"bytes"
	"maps"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Handler serves every registered family, then the Go runtime's and the
// process's metrics, in the Prometheus text format (version 0.0.4).
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		var b bytes.Buffer
		writeFamilies(&b)
		writeRuntime(&b)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = w.Write(b.Bytes())
	})
}

// writeFamilies writes the registered families sorted by name, and their
// series sorted by label values. A family with labels and no series yet
// is left out, as the Prometheus client does.
func writeFamilies(b *bytes.Buffer) {
	registry.mu.Lock()
	fams := slices.Collect(maps.Values(registry.families))
	registry.mu.Unlock()
	slices.SortFunc(fams, func(x, y *family) int { return strings.Compare(x.name, y.name) })
	for _, f := range fams {
		f.mu.RLock()
		list := slices.Collect(maps.Values(f.series))
		f.mu.RUnlock()
		if len(list) == 0 {
			continue
		}
		slices.SortFunc(list, func(x, y *series) int { return slices.Compare(x.values, y.values) })
		header(b, f.name, f.help, f.kind)
		for _, s := range list {
			labels := f.labelText(s.values)
			switch m := s.metric.(type) {
			case *Counter:
				sample(b, f.name, labels, m.v.get())
			case *Gauge:
				sample(b, f.name, labels, m.v.get())
			case *Histogram:
				m.write(b, f.name, labels)
			}
		}
	}
}

// labelText renders label pairs sorted by name, without braces.
func (f *family) labelText(values []string) string {
	var b strings.Builder
	for n, i := range f.order {
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString(f.labels[i])
		b.WriteString(`="`)
		b.WriteString(labelEscaper.Replace(values[i]))
		b.WriteByte('"')
	}
	return b.String()
}

// write renders a histogram's cumulative buckets, sum and count. The count
// is the +Inf bucket, so that the two agree under concurrent Observe.
func (h *Histogram) write(b *bytes.Buffer, name, labels string) {
	sep := ""
	if labels != "" {
		sep = ","
	}
	var cum uint64
	for i := range h.counts {
		cum += h.counts[i].Load()
		le := "+Inf"
		if i < len(h.upper) {
			le = formatFloat(h.upper[i])
		}
		sample(b, name+"_bucket", labels+sep+`le="`+le+`"`, float64(cum))
	}
	sample(b, name+"_sum", labels, h.sum.get())
	sample(b, name+"_count", labels, float64(cum))
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func header(b *bytes.Buffer, name, help, kind string) {
	b.WriteString("# HELP ")
	b.WriteString(name)
	b.WriteByte(' ')
	b.WriteString(helpEscaper.Replace(help))
	b.WriteString("\n# TYPE ")
	b.WriteString(name)
	b.WriteByte(' ')
	b.WriteString(kind)
	b.WriteByte('\n')
}

func sample(b *bytes.Buffer, name, labels string, v float64) {
	b.WriteString(name)
	if labels != "" {
		b.WriteByte('{')
		b.WriteString(labels)
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	b.WriteString(formatFloat(v))
	b.WriteByte('\n')
}

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// started is when the process started, near enough: package variables are
// set before main.
var started = time.Now()

// writeRuntime writes the Go runtime's and the process's metrics under the
// names the Prometheus client uses for them, so dashboards built for Go
// services work unchanged.
func writeRuntime(b *bytes.Buffer) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gauge := func(name, help string, v float64) {
		header(b, name, help, "gauge")
		sample(b, name, "", v)
	}
	counter := func(name, help string, v float64) {
		header(b, name, help, "counter")
		sample(b, name, "", v)
	}
	header(b, "go_gc_duration_seconds", "Pause times of the garbage collector's stop-the-world phases.", "summary")
	sample(b, "go_gc_duration_seconds_sum", "", float64(ms.PauseTotalNs)/1e9)
	sample(b, "go_gc_duration_seconds_count", "", float64(ms.NumGC))
	gauge("go_goroutines", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	// Threads the process has created (the runtime keeps them): a worker
	// that held one per running CLI would show it here.
	threads, _ := runtime.ThreadCreateProfile(nil)
	gauge("go_threads", "Number of OS threads created.", float64(threads))
	gauge("go_sched_gomaxprocs_threads", "The current runtime.GOMAXPROCS setting, or the number of operating system threads that can execute user-level Go code simultaneously.", float64(runtime.GOMAXPROCS(0)))
	header(b, "go_info", "Information about the Go environment.", "gauge")
	sample(b, "go_info", `version="`+labelEscaper.Replace(runtime.Version())+`"`, 1)
	gauge("go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use.", float64(ms.Alloc))
	counter("go_memstats_alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already.", float64(ms.TotalAlloc))
	counter("go_memstats_frees_total", "Total number of heap objects frees.", float64(ms.Frees))
	gauge("go_memstats_gc_sys_bytes", "Number of bytes used for garbage collection system metadata.", float64(ms.GCSys))
	gauge("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use.", float64(ms.HeapAlloc))
	gauge("go_memstats_heap_idle_bytes", "Number of heap bytes waiting to be used.", float64(ms.HeapIdle))
	gauge("go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use.", float64(ms.HeapInuse))
	gauge("go_memstats_heap_objects", "Number of currently allocated objects.", float64(ms.HeapObjects))
	gauge("go_memstats_heap_released_bytes", "Number of heap bytes released to OS.", float64(ms.HeapReleased))
	gauge("go_memstats_heap_sys_bytes", "Number of heap bytes obtained from system.", float64(ms.HeapSys))
	gauge("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", float64(ms.LastGC)/1e9)
	counter("go_memstats_mallocs_total", "Total number of heap objects allocated.", float64(ms.Mallocs))
	gauge("go_memstats_next_gc_bytes", "Number of heap bytes when next garbage collection will take place.", float64(ms.NextGC))
	gauge("go_memstats_stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments.", float64(ms.StackInuse))
	gauge("go_memstats_stack_sys_bytes", "Number of bytes obtained from system for stack allocator.", float64(ms.StackSys))
	gauge("go_memstats_sys_bytes", "Number of bytes obtained from system.", float64(ms.Sys))

	p := readProcess()
	if p.ok {
		counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", p.cpuSeconds)
		gauge("process_resident_memory_bytes", "Resident memory size in bytes.", p.rss)
		gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", p.vsize)
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		gauge("process_open_fds", "Number of open file descriptors.", float64(len(fds)))
	}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		gauge("process_max_fds", "Maximum number of open file descriptors.", float64(lim.Cur))
	}
	gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", float64(started.UnixNano())/1e9)
}

// processStat is what /proc/self/stat says of this process.
type processStat struct {
	ok                     bool
	cpuSeconds, rss, vsize float64
}

// readProcess reads /proc/self/stat (Linux; elsewhere ok is false).
func readProcess() processStat {
	raw, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return processStat{}
	}
	// Fields follow the command name, which may hold spaces: f[0] is
	// field 3 (state), so field n is f[n-3].
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return processStat{}
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 22 {
		return processStat{}
	}
	num := func(n int) float64 { v, _ := strconv.ParseFloat(f[n-3], 64); return v }
	const userHZ = 100 // clock ticks per second on Linux's ABI
	return processStat{
		ok:         true,
		cpuSeconds: (num(14) + num(15)) / userHZ,
		vsize:      num(23),
		rss:        num(24) * float64(os.Getpagesize()),
	}
}
