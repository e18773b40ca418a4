// Package metrics is a small hand-written Prometheus registry: counters and histograms
// (with fixed label names), gauges read at scrape time, and their text exposition (format
// 0.0.4). No client_golang: the front builds in GOPATH mode over Debian's packages only.
package metrics

import (
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ContentType of the text exposition format.
const ContentType = "text/plain; version=0.0.4; charset=utf-8"

// Registry holds metric families in the order they were made; families come out sorted by
// name, their series by label values.
type Registry struct {
	mu   sync.Mutex
	fams []family
}

type family interface {
	name() string
	write(b *strings.Builder)
}

func (r *Registry) add(f family) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, g := range r.fams {
		if g.name() == f.name() {
			panic("metrics: " + f.name() + " registered twice")
		}
	}
	r.fams = append(r.fams, f)
}

// meta is what every family has: name, help, type and label names.
type meta struct {
	n, help, typ string
	labels       []string
}

func (m *meta) name() string { return m.n }

func (m *meta) header(b *strings.Builder) {
	b.WriteString("# HELP ")
	b.WriteString(m.n)
	b.WriteByte(' ')
	b.WriteString(escapeHelp(m.help))
	b.WriteString("\n# TYPE ")
	b.WriteString(m.n)
	b.WriteByte(' ')
	b.WriteString(m.typ)
	b.WriteByte('\n')
}

// series is one label-value combination of a family (with a child of type T).
type series[T any] struct {
	values []string
	child  *T
}

// vec is a family's children by label values, made on first use.
type vec[T any] struct {
	meta
	mu  sync.RWMutex
	of  map[string]*series[T]
	mk  func() *T
	all []*series[T]
}

func newVec[T any](m meta, mk func() *T) *vec[T] {
	return &vec[T]{meta: m, of: map[string]*series[T]{}, mk: mk}
}

func (v *vec[T]) with(values ...string) *T {
	if len(values) != len(v.labels) {
		panic("metrics: " + v.n + ": want " + strconv.Itoa(len(v.labels)) + " label values")
	}
	key := strings.Join(values, "\xff")
	v.mu.RLock()
	s := v.of[key]
	v.mu.RUnlock()
	if s != nil {
		return s.child
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if s = v.of[key]; s == nil {
		s = &series[T]{values: append([]string(nil), values...), child: v.mk()}
		v.of[key] = s
		v.all = append(v.all, s)
	}
	return s.child
}

// sorted: the series by label values (a copy, taken under the lock).
func (v *vec[T]) sorted() []*series[T] {
	v.mu.RLock()
	out := append([]*series[T](nil), v.all...)
	v.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].values, out[j].values
		for k := range a {
			if a[k] != b[k] {
				return a[k] < b[k]
			}
		}
		return false
	})
	return out
}

// Counter is a monotonic integer count.
type Counter struct{ v atomic.Uint64 }

// Inc adds 1.
func (c *Counter) Inc() { c.v.Add(1) }

// Add adds n.
func (c *Counter) Add(n uint64) { c.v.Add(n) }

// Value is the count so far.
func (c *Counter) Value() uint64 { return c.v.Load() }

// CounterVec is a counter family.
type CounterVec struct{ v *vec[Counter] }

// NewCounter registers a counter family; name should end in _total.
func (r *Registry) NewCounter(name, help string, labels ...string) *CounterVec {
	c := &CounterVec{newVec(meta{name, help, "counter", labels}, func() *Counter { return &Counter{} })}
	r.add(c)
	return c
}

// With is the counter of these label values (in the order of the label names), made at
// first use. Callers keep label values to a bounded set.
func (c *CounterVec) With(values ...string) *Counter { return c.v.with(values...) }

func (c *CounterVec) name() string { return c.v.n }

func (c *CounterVec) write(b *strings.Builder) {
	c.v.header(b)
	for _, s := range c.v.sorted() {
		sample(b, c.v.n, c.v.labels, s.values, "", "", formatUint(s.child.Value()))
	}
}

// GaugeFunc is a gauge without labels whose value is read at scrape time.
type GaugeFunc struct {
	meta
	f func() float64
}

// NewGaugeFunc registers a gauge read by f at each scrape.
func (r *Registry) NewGaugeFunc(name, help string, f func() float64) {
	r.add(&GaugeFunc{meta{name, help, "gauge", nil}, f})
}

func (g *GaugeFunc) write(b *strings.Builder) {
	g.header(b)
	sample(b, g.n, nil, nil, "", "", formatFloat(g.f()))
}

// Histogram counts observations into buckets (upper bounds, inclusive) and sums them.
type Histogram struct {
	upper  []float64
	counts []atomic.Uint64 // per bucket, not cumulative; the last one is +Inf
	sum    atomic.Uint64   // float64 bits
}

// Observe adds one observation.
func (h *Histogram) Observe(x float64) {
	h.counts[sort.SearchFloat64s(h.upper, x)].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+x)) {
			return
		}
	}
}

// HistogramVec is a histogram family.
type HistogramVec struct{ v *vec[Histogram] }

// NewHistogram registers a histogram family with these bucket upper bounds (increasing,
// finite; +Inf is added).
func (r *Registry) NewHistogram(name, help string, buckets []float64, labels ...string) *HistogramVec {
	upper := append([]float64(nil), buckets...)
	if !sort.Float64sAreSorted(upper) || len(upper) == 0 || math.IsInf(upper[len(upper)-1], 1) {
		panic("metrics: " + name + ": buckets must be increasing and finite")
	}
	h := &HistogramVec{newVec(meta{name, help, "histogram", labels}, func() *Histogram {
		return &Histogram{upper: upper, counts: make([]atomic.Uint64, len(upper)+1)}
	})}
	r.add(h)
	return h
}

// With is the histogram of these label values, made at first use.
func (h *HistogramVec) With(values ...string) *Histogram { return h.v.with(values...) }

func (h *HistogramVec) name() string { return h.v.n }

func (h *HistogramVec) write(b *strings.Builder) {
	h.v.header(b)
	for _, s := range h.v.sorted() {
		x := s.child
		var cum uint64
		for i := range x.counts {
			cum += x.counts[i].Load()
			le := "+Inf"
			if i < len(x.upper) {
				le = formatFloat(x.upper[i])
			}
			sample(b, h.v.n+"_bucket", h.v.labels, s.values, "le", le, formatUint(cum))
		}
		sum := formatFloat(math.Float64frombits(x.sum.Load()))
		sample(b, h.v.n+"_sum", h.v.labels, s.values, "", "", sum)
		sample(b, h.v.n+"_count", h.v.labels, s.values, "", "", formatUint(cum))
	}
}

// WriteTo writes every family in the text exposition format.
func (r *Registry) WriteTo(w io.Writer) (int64, error) {
	r.mu.Lock()
	fams := append([]family(nil), r.fams...)
	r.mu.Unlock()
	sort.Slice(fams, func(i, j int) bool { return fams[i].name() < fams[j].name() })
	var b strings.Builder
	for _, f := range fams {
		f.write(&b)
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// ServeHTTP answers GET (and HEAD) with the exposition.
func (r *Registry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", ContentType)
	if req.Method == http.MethodGet {
		_, _ = r.WriteTo(w)
	}
}

// sample writes one line: name{labels[,extra="value"]} value.
func sample(b *strings.Builder, name string, labels, values []string, extra, extraValue, value string) {
	b.WriteString(name)
	if len(labels) > 0 || extra != "" {
		b.WriteByte('{')
		for i, l := range labels {
			if i > 0 {
				b.WriteByte(',')
			}
			label(b, l, values[i])
		}
		if extra != "" {
			if len(labels) > 0 {
				b.WriteByte(',')
			}
			label(b, extra, extraValue)
		}
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	b.WriteString(value)
	b.WriteByte('\n')
}

func label(b *strings.Builder, name, value string) {
	b.WriteString(name)
	b.WriteString(`="`)
	b.WriteString(escapeLabel(value))
	b.WriteByte('"')
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

func formatUint(v uint64) string { return strconv.FormatUint(v, 10) }

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
