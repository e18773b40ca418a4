package front

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	pb "persona/clients/go/personav1"
	"persona/front/go/kafka"
	"persona/front/go/metrics"
)

// TestServedRecordsArePythons: the records of testdata/served_log.json, as
// services/serving/served_log.py's Sample.records() wrote them (gen_served_log.py), byte
// for byte: json.dumps' separators, key order, escapes (control characters, quotes,
// backslash; non-ASCII, DEL and U+2028 as they are), null computed_at_ms and request_id.
func TestServedRecordsArePythons(t *testing.T) {
	raw, err := os.ReadFile("../testdata/served_log.json")
	if err != nil {
		t.Fatal(err)
	}
	var fx struct {
		Records []struct {
			ServedAtMs   int64   `json:"served_at_ms"`
			RequestID    *string `json:"request_id"`
			Version      string  `json:"version"`
			UserID       string  `json:"user_id"`
			Status       string  `json:"status"`
			ComputedAtMs int64   `json:"computed_at_ms"`
			KeyHex       string  `json:"key_hex"`
			ValueHex     string  `json:"value_hex"`
		} `json:"records"`
	}
	if err := json.Unmarshal(raw, &fx); err != nil || len(fx.Records) < 20 {
		t.Fatalf("fixtures: %v (%d): run testdata/gen_served_log.py", err, len(fx.Records))
	}
	for _, c := range fx.Records {
		s := sample{servedAtMs: c.ServedAtMs, requestID: c.RequestID, version: c.Version,
			userIDs: []string{c.UserID}, statuses: []string{c.Status},
			computedAt: []int64{c.ComputedAtMs}}
		got := s.appendRecords(nil)
		key, _ := hex.DecodeString(c.KeyHex)
		value, _ := hex.DecodeString(c.ValueHex)
		if len(got) != 1 || string(got[0].Key) != string(key) || string(got[0].Value) != string(value) {
			t.Errorf("%q %s:\n got %s\nwant %s", c.UserID, c.Status, got[0].Value, value)
		}
	}
}

// fakeProducer records what it was given; fail: its answer instead.
type fakeProducer struct {
	mu      sync.Mutex
	got     []kafka.Record
	calls   int
	fail    int           // calls after this many fail (0: none)
	block   chan struct{} // set: Produce waits for it, or for ctx
	inside  sync.Once     // entered closed at the first Produce
	entered chan struct{}
	closed  bool
}

func (p *fakeProducer) Produce(ctx context.Context, recs []kafka.Record, _ <-chan struct{}) (int, error) {
	p.inside.Do(func() {
		if p.entered != nil {
			close(p.entered)
		}
	})
	if p.block != nil {
		select {
		case <-p.block:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	if p.fail > 0 && p.calls > p.fail {
		return 0, errors.New("broker away")
	}
	p.got = append(p.got, recs...)
	return len(recs), nil
}

func (p *fakeProducer) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
}

func answerOf(version string, found ...bool) *pb.GetEmbeddingsResponse {
	out := &pb.GetEmbeddingsResponse{ModelVersion: version, Meta: &pb.VectorMetaColumns{}}
	for i, f := range found {
		st := pb.EmbeddingStatus_EMBEDDING_STATUS_NOT_FOUND
		if f {
			st = pb.EmbeddingStatus_EMBEDDING_STATUS_FOUND
		}
		out.Statuses = append(out.Statuses, st)
		out.Meta.ComputedAtMs = append(out.Meta.ComputedAtMs, int64(1000+i))
	}
	return out
}

func servedCounts(t *testing.T, reg *metrics.Registry, sent, dropped, failed int) {
	t.Helper()
	expect(t, scrape(t, reg),
		`persona_front_served_log_records_total{outcome="sent"} `+itoa(sent),
		`persona_front_served_log_records_total{outcome="dropped"} `+itoa(dropped),
		`persona_front_served_log_records_total{outcome="failed"} `+itoa(failed))
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestServedLogSendsEveryRowAtRate1(t *testing.T) {
	reg, p := &metrics.Registry{}, &fakeProducer{}
	f := New(nil, nil, Config{Metrics: reg, ServedLog: ServedLogConfig{Rate: 1, Queue: 10, Producer: p}})
	t0 := time.Now().UnixMilli()
	f.served.offer([]string{"u1", "gone", "u1"}, answerOf("v1", true, false, true), "req-1")
	f.served.offer([]string{"évé"}, answerOf("v2", true), "req-2")
	if sent, failed, dropped := f.CloseServedLog(5 * time.Second); sent != 4 || failed+dropped != 0 {
		t.Fatalf("sent %d failed %d dropped %d", sent, failed, dropped)
	}
	servedCounts(t, reg, 4, 0, 0)
	if len(p.got) != 4 || !p.closed {
		t.Fatalf("%d records, closed %v", len(p.got), p.closed)
	}
	var v struct {
		UserID     string `json:"user_id"`
		Status     string `json:"status"`
		ComputedAt *int64 `json:"computed_at_ms"`
		ServedAt   int64  `json:"served_at_ms"`
		RequestID  string `json:"request_id"`
	}
	if err := json.Unmarshal(p.got[1].Value, &v); err != nil || v.UserID != "gone" ||
		v.Status != "not_found" || v.ComputedAt != nil || v.RequestID != "req-1" ||
		v.ServedAt < t0 || string(p.got[1].Key) != "gone" {
		t.Fatalf("%s: %v %+v", p.got[1].Value, err, v)
	}
	if err := json.Unmarshal(p.got[2].Value, &v); err != nil || *v.ComputedAt != 1002 {
		t.Fatalf("%s: %v", p.got[2].Value, err)
	}
	f.served.offer([]string{"late"}, answerOf("v1", true), "r") // closed: ignored
	servedCounts(t, reg, 4, 0, 0)
}

func TestServedLogSamplesDropsAndFails(t *testing.T) {
	reg, p := &metrics.Registry{}, &fakeProducer{block: make(chan struct{}), fail: 1,
		entered: make(chan struct{})}
	f := New(nil, nil, Config{Metrics: reg, ServedLog: ServedLogConfig{Rate: 0.25, Queue: 2, Producer: p}})
	ids, found := make([]string, 4000), make([]bool, 4000)
	for i := range ids {
		ids[i] = "u" + itoa(i)
	}
	f.served.offer(ids, answerOf("v1", found...), "r") // the goroutine takes it, then waits
	<-p.entered
	deadline := time.Now().Add(10 * time.Second)
	for len(f.served.q) < cap(f.served.q) && time.Now().Before(deadline) { // 2 rows queued
		f.served.offer(ids[:1], answerOf("v1", true), "r1")
	}
	for k := 0; k < 200; k++ { // the queue (2) is full: every kept row counts as dropped
		f.served.offer(ids[:10], answerOf("v1", make([]bool, 10)...), "r2")
	}
	dropped := f.served.dropped.Value()
	if dropped < 300 || dropped > 700 { // 2000 rows at 0.25: 500 expected
		t.Fatalf("dropped %d of 2000 rows at rate 0.25", dropped)
	}
	close(p.block) // the first batch is sent, the next (the 2 queued rows) fails
	sent, failed, _ := f.CloseServedLog(5 * time.Second)
	if sent < 800 || sent > 1200 || failed != 2 { // 4000 rows at 0.25: 1000 expected
		t.Fatalf("sent %d failed %d", sent, failed)
	}
	servedCounts(t, reg, int(sent), int(dropped), 2)
}

func TestServedLogCloseIsBounded(t *testing.T) {
	reg, p := &metrics.Registry{}, &fakeProducer{block: make(chan struct{}), // never answers
		entered: make(chan struct{})}
	f := New(nil, nil, Config{Metrics: reg, ServedLog: ServedLogConfig{Rate: 1, Queue: 5, Producer: p}})
	f.served.offer([]string{"a", "b"}, answerOf("v1", true, true), "r")
	<-p.entered
	f.served.offer([]string{"c"}, answerOf("v1", true), "r")
	t0 := time.Now()
	sent, failed, dropped := f.CloseServedLog(200 * time.Millisecond)
	if took := time.Since(t0); took > 5*time.Second || sent != 0 || failed+dropped != 3 {
		t.Fatalf("closed in %v: sent %d failed %d dropped %d", took, sent, failed, dropped)
	}
	off := New(nil, nil, Config{ServedLog: ServedLogConfig{Rate: 0, Producer: p}})
	if off.served != nil {
		t.Fatal("rate 0: a served log")
	}
	off.served.offer([]string{"a"}, answerOf("v1", true), "r") // nil-safe
	if s, fl, d := off.CloseServedLog(time.Second); s+fl+d != 0 {
		t.Fatal("rate 0 counted")
	}
}
