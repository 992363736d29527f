// Package metrics holds the process's counters, gauges and histograms and
// serves them, with Go runtime and process metrics, in the Prometheus text
// format.
//
// It replaces the Prometheus client library, whose package initialisation
// (protobuf descriptors, collectors) and 4.5 MB of code cost a gateway
// about 5 ms of its cold start (bench/RESULTS.md); what agentgate needs of
// it is this file's few types and the text format.
package metrics

import (
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Counter is a value that only goes up.
type Counter struct{ v value }

// Inc adds one.
func (c *Counter) Inc() { c.v.add(1) }

// Add adds v, which must not be negative.
func (c *Counter) Add(v float64) {
	if v > 0 {
		c.v.add(v)
	}
}

// Value is the counter's current value (for tests).
func (c *Counter) Value() float64 { return c.v.get() }

// Gauge is a value that goes up and down.
type Gauge struct{ v value }

// Inc adds one.
func (g *Gauge) Inc() { g.v.add(1) }

// Dec subtracts one.
func (g *Gauge) Dec() { g.v.add(-1) }

// Add adds v.
func (g *Gauge) Add(v float64) { g.v.add(v) }

// Set sets the value to v.
func (g *Gauge) Set(v float64) { g.v.set(v) }

// value is a float64 updated without locks. Whole numbers, which are
// nearly all of them (frames, bytes, sockets), go to an integer that one
// atomic add updates; the rest to a float updated by compare-and-swap.
type value struct {
	whole atomic.Int64
	frac  atomic.Uint64 // float64 bits
}

func (v *value) add(d float64) {
	if d == math.Trunc(d) && math.Abs(d) < 1<<53 {
		v.whole.Add(int64(d))
		return
	}
	for {
		old := v.frac.Load()
		if v.frac.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

func (v *value) set(d float64) {
	v.whole.Store(0)
	v.frac.Store(math.Float64bits(d))
}

func (v *value) get() float64 {
	return float64(v.whole.Load()) + math.Float64frombits(v.frac.Load())
}

// Histogram counts observations in buckets.
type Histogram struct {
	upper  []float64       // bucket upper bounds, ascending
	counts []atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	sum    value
}

func newHistogram(upper []float64) *Histogram {
	return &Histogram{upper: upper, counts: make([]atomic.Uint64, len(upper)+1)}
}

// Observe records v.
func (h *Histogram) Observe(v float64) {
	i, _ := slices.BinarySearch(h.upper, v) // the first bound >= v
	h.counts[i].Add(1)
	h.sum.add(v)
}

// ExponentialBuckets returns n bucket bounds, the first start, each the
// one before times factor.
func ExponentialBuckets(start, factor float64, n int) []float64 {
	b := make([]float64, n)
	for i := range b {
		b[i] = start
		start *= factor
	}
	return b
}

// family is one metric name with its help, type and labelled series.
type family struct {
	name, help, kind string
	labels           []string  // label names, as declared
	order            []int     // label indexes, sorted by name (the exposition's order)
	buckets          []float64 // histograms only

	mu     sync.RWMutex
	series map[string]*series // by label values joined with \xff
}

// series is one combination of label values and its metric.
type series struct {
	values []string
	metric any // *Counter, *Gauge or *Histogram
}

// registry is every family of the process, by name.
var registry struct {
	mu       sync.Mutex
	families map[string]*family
}

func register(name, help, kind string, buckets []float64, labels []string) *family {
	f := &family{name: name, help: help, kind: kind, labels: labels, buckets: buckets, series: map[string]*series{}}
	f.order = make([]int, len(labels))
	for i := range f.order {
		f.order[i] = i
	}
	slices.SortFunc(f.order, func(a, b int) int { return strings.Compare(labels[a], labels[b]) })
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.families == nil {
		registry.families = map[string]*family{}
	}
	if _, dup := registry.families[name]; dup {
		panic("metrics: " + name + " registered twice") // a programming error, at init
	}
	registry.families[name] = f
	return f
}

// with returns the metric of the label values, made on first use: a
// series appears once something counted in it.
func (f *family) with(values []string) any {
	if len(values) != len(f.labels) {
		panic("metrics: " + f.name + " takes " + strings.Join(f.labels, ", "))
	}
	key := strings.Join(values, "\xff")
	f.mu.RLock()
	s := f.series[key]
	f.mu.RUnlock()
	if s != nil {
		return s.metric
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s := f.series[key]; s != nil {
		return s.metric
	}
	s = &series{values: slices.Clone(values)}
	switch f.kind {
	case "counter":
		s.metric = &Counter{}
	case "gauge":
		s.metric = &Gauge{}
	default:
		s.metric = newHistogram(f.buckets)
	}
	f.series[key] = s
	return s.metric
}

// NewCounter registers a counter without labels.
func NewCounter(name, help string) *Counter {
	return register(name, help, "counter", nil, nil).with(nil).(*Counter)
}

// NewGauge registers a gauge without labels.
func NewGauge(name, help string) *Gauge {
	return register(name, help, "gauge", nil, nil).with(nil).(*Gauge)
}

// CounterVec is a counter with labels.
type CounterVec struct{ f *family }

// NewCounterVec registers a counter with the given label names.
func NewCounterVec(name, help string, labels ...string) *CounterVec {
	return &CounterVec{register(name, help, "counter", nil, labels)}
}

// WithLabelValues returns the counter of the label values, in the order
// the labels were declared.
func (v *CounterVec) WithLabelValues(values ...string) *Counter { return v.f.with(values).(*Counter) }

// GaugeVec is a gauge with labels.
type GaugeVec struct{ f *family }

// NewGaugeVec registers a gauge with the given label names.
func NewGaugeVec(name, help string, labels ...string) *GaugeVec {
	return &GaugeVec{register(name, help, "gauge", nil, labels)}
}

// WithLabelValues returns the gauge of the label values.
func (v *GaugeVec) WithLabelValues(values ...string) *Gauge { return v.f.with(values).(*Gauge) }

// HistogramVec is a histogram with labels.
type HistogramVec struct{ f *family }

// NewHistogramVec registers a histogram with the given bucket upper
// bounds (ascending) and label names.
func NewHistogramVec(name, help string, buckets []float64, labels ...string) *HistogramVec {
	if !slices.IsSorted(buckets) {
		panic("metrics: " + name + ": buckets not ascending")
	}
	return &HistogramVec{register(name, help, "histogram", slices.Clone(buckets), labels)}
}

// WithLabelValues returns the histogram of the label values.
func (v *HistogramVec) WithLabelValues(values ...string) *Histogram {
	return v.f.with(values).(*Histogram)
}
