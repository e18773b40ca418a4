package metrics

import (
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

func TestGolden(t *testing.T) {
	r := &Registry{}
	calls := r.NewCounter("x_calls_total", "Calls by \"kind\",\nescaped \\ help.", "kind", "code")
	calls.With("b", "OK").Add(3)
	calls.With("a", "OK").Inc()
	calls.With("a\"q\\\nz", "UNKNOWN").Inc()
	_ = calls.With("zero", "OK") // made, never counted: still exposed, 0
	h := r.NewHistogram("x_seconds", "Latency.", []float64{0.001, 0.01, 1})
	s := h.With()
	for _, x := range []float64{0.0005, 0.001, 0.002, 0.5, 3} {
		s.Observe(x)
	}
	_ = r.NewHistogram("x_empty_seconds", "Nothing yet.", []float64{0.25}, "method").With("Get")
	r.NewGaugeFunc("x_known", "A gauge.", func() float64 { return 1 })
	r.NewGaugeFunc("x_inf", "Infinite.", func() float64 { return math.Inf(1) })
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP x_calls_total Calls by "kind",\nescaped \\ help.
# TYPE x_calls_total counter
x_calls_total{kind="a",code="OK"} 1
x_calls_total{kind="a\"q\\\nz",code="UNKNOWN"} 1
x_calls_total{kind="b",code="OK"} 3
x_calls_total{kind="zero",code="OK"} 0
# HELP x_empty_seconds Nothing yet.
# TYPE x_empty_seconds histogram
x_empty_seconds_bucket{method="Get",le="0.25"} 0
x_empty_seconds_bucket{method="Get",le="+Inf"} 0
x_empty_seconds_sum{method="Get"} 0
x_empty_seconds_count{method="Get"} 0
# HELP x_inf Infinite.
# TYPE x_inf gauge
x_inf +Inf
# HELP x_known A gauge.
# TYPE x_known gauge
x_known 1
# HELP x_seconds Latency.
# TYPE x_seconds histogram
x_seconds_bucket{le="0.001"} 2
x_seconds_bucket{le="0.01"} 3
x_seconds_bucket{le="1"} 4
x_seconds_bucket{le="+Inf"} 5
x_seconds_sum 3.5035
x_seconds_count 5
`
	if got := b.String(); got != want {
		t.Fatalf("exposition:\n%s\nwant:\n%s", got, want)
	}
}

func TestConcurrentCounting(t *testing.T) {
	r := &Registry{}
	c := r.NewCounter("c_total", "c", "k")
	h := r.NewHistogram("h_seconds", "h", []float64{1}).With()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				c.With([]string{"a", "b"}[i%2]).Inc()
				h.Observe(0.5)
			}
		}(g)
	}
	wg.Wait()
	if a, b := c.With("a").Value(), c.With("b").Value(); a != 4000 || b != 4000 {
		t.Fatalf("counts %d %d", a, b)
	}
	var sb strings.Builder
	_, _ = r.WriteTo(&sb)
	for _, line := range []string{`h_seconds_bucket{le="1"} 8000`, `h_seconds_bucket{le="+Inf"} 8000`,
		"h_seconds_sum 4000\n", "h_seconds_count 8000"} {
		if !strings.Contains(sb.String(), line) {
			t.Fatalf("no %q in\n%s", line, sb.String())
		}
	}
}

func TestHTTP(t *testing.T) {
	r := &Registry{}
	r.NewCounter("c_total", "c").With().Add(2)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != 200 || rec.Header().Get("Content-Type") != ContentType ||
		!strings.Contains(rec.Body.String(), "\nc_total 2\n") {
		t.Fatalf("%d %q %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String())
	}
	rec = httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/metrics", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", rec.Code)
	}
}

func TestMisuse(t *testing.T) {
	for name, f := range map[string]func(){
		"twice":       func() { r := &Registry{}; r.NewCounter("a", "a"); r.NewCounter("a", "a") },
		"labels":      func() { (&Registry{}).NewCounter("a", "a", "k").With() },
		"buckets":     func() { (&Registry{}).NewHistogram("h", "h", []float64{2, 1}) },
		"inf buckets": func() { (&Registry{}).NewHistogram("h", "h", []float64{math.Inf(1)}) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}
