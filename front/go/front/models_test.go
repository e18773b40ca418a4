package front

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"persona/front/go/shortterm"
	"persona/front/go/store"
)

const outcomesText = `{"names": ["(any)", "p"], "horizons_ms": [1], "weight": [[1, 2], [3, 4]],` +
	` "bias": [0.5, 1], "a": [[1, 1]], "b": [[0, 0]], "calibrated": [[true, false]]}`

// The outcome heads' cache: not sure without the head file (tried again after headRetry),
// known absent beside it (kept, as Python's head keeps none), loaded once there.
func TestModelOutcomes(t *testing.T) {
	dir := t.TempDir()
	folder := filepath.Join(dir, "v1")
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	m := newModelHeads(dir)
	if o, st := m.outcomes("v1"); st != fileFailed || o != nil {
		t.Fatal("no head file: want not ok")
	}
	if err := os.WriteFile(filepath.Join(folder, shortterm.File), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, st := m.outcomes("v1"); st != fileFailed {
		t.Error("the failure is kept until headRetry")
	}
	m.of["v1"].out.retry = m.of["v1"].out.retry.Add(-2 * headRetry)
	if o, st := m.outcomes("v1"); st != fileKnown || o != nil {
		t.Errorf("no outcomes.json: %v %v, want nil, fileKnown", o, st)
	}
	if err := os.WriteFile(filepath.Join(folder, shortterm.OutcomesFile), []byte(outcomesText),
		0o644); err != nil {
		t.Fatal(err)
	}
	if o, st := m.outcomes("v1"); st != fileKnown || o != nil {
		t.Error("known absent: kept (a version never changes)")
	}
	m2 := newModelHeads(dir)
	o, st := m2.outcomes("v1")
	if st != fileKnown || o == nil || o.N() != 1 || o.E != 2 {
		t.Fatalf("%v %v", o, st)
	}
	if h, st := m2.head("v1"); h != nil || st != fileFailed {
		t.Error("an unreadable head file: no head")
	}
	if o2, st := m2.outcomes("v1"); o2 != o || st != fileKnown {
		t.Error("the outcome heads are kept beside the failed head")
	}
	// newestScores: stored unless the row moved and the heads serve the stored count
	v := &store.Vector{Values: []float32{1, -1}, Scores: []float32{0.25}}
	moved := &folded{events: 1, delta: []float32{0, 1}}
	buf, sum := make([]float32, 1), make([]float32, 2)
	if got := newestScores(o, &folded{}, v, 1, buf, sum); got[0] != 0.25 {
		t.Errorf("nothing moved: %v", got)
	}
	if got := newestScores(o, moved, v, 2, buf, sum); got[0] != 0.25 {
		t.Errorf("another column count: %v", got)
	}
	if got := newestScores(nil, moved, v, 1, buf, sum); got[0] != 0.25 {
		t.Errorf("no outcome heads: %v", got)
	}
	got := newestScores(o, moved, v, 1, buf, sum) // sigmoid(1*1 + 0*2 + 0.5)
	if want := float32(0.81757448); got[0] != want {
		t.Errorf("moved: %v, want %v", got[0], want)
	}
}

// A file is read by one request at a time: another request for it, meanwhile, goes up
// (false) instead of waiting, and other versions' files are not held up by it.
func TestLoadedSingleFlight(t *testing.T) {
	m := newModelHeads(t.TempDir())
	reading, release := make(chan struct{}), make(chan struct{})
	done := make(chan int)
	slow := func() (*shortterm.Outcomes, error) {
		close(reading)
		<-release
		return &shortterm.Outcomes{E: 7}, nil
	}
	fail := func(err error) { t.Error(err) }
	go func() {
		o, st := m.entry("v1").out.get(slow, fail)
		if st != fileKnown || o.E != 7 {
			t.Errorf("the reader: %v %v", o, st)
		}
		done <- 1
	}()
	wait := func(c <-chan struct{}, what string) {
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatal(what)
		}
	}
	wait(reading, "the first request never read the file")
	never := func() (*shortterm.Outcomes, error) {
		t.Error("read twice")
		return nil, nil
	}
	if o, st := m.entry("v1").out.get(never, fail); st != fileBusy || o != nil {
		t.Errorf("while being read: %v %v, want nil, fileBusy", o, st)
	}
	quick := func() (*shortterm.Outcomes, error) { return &shortterm.Outcomes{E: 3}, nil }
	if o, st := m.entry("v2").out.get(quick, fail); st != fileKnown || o.E != 3 {
		t.Errorf("another version meanwhile: %v %v", o, st)
	}
	close(release)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the reader never returned")
	}
	if o, st := m.entry("v1").out.get(never, fail); st != fileKnown || o.E != 7 {
		t.Errorf("after the read: %v %v", o, st)
	}
}
