package front

import (
	"context"
	"errors"
	"log"
	"math/rand"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	pb "persona/clients/go/personav1"
	"persona/front/go/kafka"
	"persona/front/go/metrics"
)

// The served log of the GetEmbeddings the front answers itself, as persona serve writes it
// for the ones it answers (services/serving/served_log.py; docs/api.md "The served log"):
// same records, same sampling, same topic, so a consumer cannot tell which process answered.
// Forwarded calls are logged by Python, never here.
//
//  1. offer, on the handler after the answer went out: each row kept with probability
//     rate (one draw per row; rate >= 1 keeps all); the kept rows go onto a bounded queue
//     as one item, without waiting (full: the item is dropped and its rows counted).
//  2. A goroutine takes up to ServedBatchItems items, produces their records and waits for
//     the acks up to ServedFlush: acknowledged rows count as sent, the others as failed.
//  3. Close (SIGTERM, after the gRPC server stopped): what is queued is sent (tried once
//     each, no retries), within a bound; what is left after it counts as dropped.

// Producer is what the served log uses of kafka.Producer.
type Producer interface {
	Produce(ctx context.Context, recs []kafka.Record, giveUp <-chan struct{}) (int, error)
	Close()
}

// ServedLogConfig: rate 0 (or no Producer) is off.
type ServedLogConfig struct {
	Rate     float64  // share of answered rows logged, [0, 1] (PERSONA_SERVED_LOG_RATE)
	Queue    int      // answers waiting at most (PERSONA_SERVED_LOG_QUEUE; Python's 10000)
	Producer Producer // to the topic (PERSONA_SERVED_TOPIC)
}

// served_log.py's BATCH_ITEMS and FLUSH_S; ServedMaxRows bounds the rows queued as well
// as the answers (Python bounds answers only, in a 12 GiB container; at rate 1 and 1,000
// ids a call, 10,000 answers would hold ~0.6 GB here): 500,000 rows are ~50 MB.
const (
	ServedBatchItems = 512
	ServedFlush      = 10 * time.Second
	ServedMaxRows    = 500_000
)

type servedLog struct {
	rate    float64
	q       chan *sample
	prod    Producer
	rndMu   sync.Mutex
	rnd     *rand.Rand
	sent    *metrics.Counter
	dropped *metrics.Counter
	failed  *metrics.Counter
	closed  atomic.Bool
	rows    atomic.Int64  // rows queued now (at most ServedMaxRows)
	closing chan struct{} // closed by close: send what is queued, no retries
	hard    context.Context
	cut     context.CancelFunc // the close bound passed: stop sending
	done    chan struct{}
	logs    *logLimit
}

// startServedLog starts the served log's goroutine (nil when cfg says off); its rows are
// counted on counts' outcome series (persona_front_served_log_records_total).
func startServedLog(cfg ServedLogConfig, counts *metrics.CounterVec) *servedLog {
	if cfg.Rate <= 0 || cfg.Producer == nil {
		return nil
	}
	sent, dropped, failed := counts.With("sent"), counts.With("dropped"), counts.With("failed")
	q := cfg.Queue
	if q < 1 {
		q = 1
	}
	s := &servedLog{rate: cfg.Rate, q: make(chan *sample, q), prod: cfg.Producer,
		rnd: rand.New(rand.NewSource(time.Now().UnixNano())), sent: sent, dropped: dropped,
		failed: failed, closing: make(chan struct{}), done: make(chan struct{}),
		logs: newLogLimit(30 * time.Second)}
	s.hard, s.cut = context.WithCancel(context.Background())
	go s.run()
	return s
}

// offer samples the answer out to userIDs (row i answers userIDs[i]) and queues the kept
// rows; it never blocks. requestID: the call's x-request-id, as returned to the caller.
func (s *servedLog) offer(userIDs []string, out *pb.GetEmbeddingsResponse, requestID string) {
	if s == nil || s.closed.Load() {
		return
	}
	n := len(out.Statuses)
	var rows []int
	if s.rate >= 1 {
		rows = make([]int, n)
		for i := range rows {
			rows[i] = i
		}
	} else {
		s.rndMu.Lock()
		for i := 0; i < n; i++ {
			if s.rnd.Float64() < s.rate {
				rows = append(rows, i)
			}
		}
		s.rndMu.Unlock()
	}
	if len(rows) == 0 {
		return
	}
	it := &sample{servedAtMs: time.Now().UnixMilli(), requestID: &requestID,
		version: out.ModelVersion, userIDs: make([]string, len(rows)),
		statuses: make([]string, len(rows)), computedAt: make([]int64, len(rows))}
	for k, i := range rows {
		it.userIDs[k], it.statuses[k] = userIDs[i], servedStatus(out.Statuses[i])
		if out.Meta != nil && i < len(out.Meta.ComputedAtMs) {
			it.computedAt[k] = out.Meta.ComputedAtMs[i]
		}
	}
	if s.rows.Add(int64(len(rows))) > ServedMaxRows {
		s.rows.Add(-int64(len(rows)))
		s.dropped.Add(uint64(len(rows)))
		return
	}
	select {
	case s.q <- it:
	default:
		s.rows.Add(-int64(len(rows)))
		s.dropped.Add(uint64(len(rows)))
	}
}

func (s *servedLog) run() {
	defer close(s.done)
	defer s.prod.Close()
	for {
		batch := s.take()
		if batch == nil {
			return
		}
		s.send(batch)
	}
}

// take: up to ServedBatchItems queued items, waiting for the first; nil once closing and
// the queue is empty, or once the close bound passed (what is left counts as dropped).
func (s *servedLog) take() []*sample {
	var first *sample
	select {
	case first = <-s.q:
	case <-s.closing:
		select {
		case first = <-s.q:
		default:
			return nil
		}
	}
	batch := []*sample{first}
more:
	for len(batch) < ServedBatchItems {
		select {
		case it := <-s.q:
			batch = append(batch, it)
		default:
			break more
		}
	}
	for _, it := range batch {
		s.rows.Add(-int64(len(it.userIDs)))
	}
	if s.hard.Err() != nil {
		for _, it := range batch {
			s.dropped.Add(uint64(len(it.userIDs)))
		}
		s.dropQueued()
		return nil
	}
	return batch
}

// dropQueued empties the queue, its rows counted as dropped.
func (s *servedLog) dropQueued() {
	for {
		select {
		case it := <-s.q:
			s.rows.Add(-int64(len(it.userIDs)))
			s.dropped.Add(uint64(len(it.userIDs)))
		default:
			return
		}
	}
}

func (s *servedLog) send(batch []*sample) {
	var recs []kafka.Record
	for _, it := range batch {
		recs = it.appendRecords(recs)
	}
	ctx, cancel := context.WithTimeout(s.hard, ServedFlush)
	n, err := s.prod.Produce(ctx, recs, s.closing)
	cancel()
	s.sent.Add(uint64(n))
	if left := len(recs) - n; left > 0 {
		s.failed.Add(uint64(left))
		hint := ""
		if errors.Is(err, kafka.ErrUnknownTopic) {
			hint = "; persona serve creates it at start when its served-log rate is > 0"
		}
		if held, ok := s.logs.allow("send"); ok {
			log.Printf("persona-front: served log: %d answers not acknowledged: %v%s%s",
				left, err, hint, heldBack(held))
		}
	}
}

// close sends what is queued and stops within bound (nil-safe, idempotent); what is still
// queued when the bound passed counts as dropped.
func (s *servedLog) close(bound time.Duration) {
	if s == nil || !s.closed.CompareAndSwap(false, true) {
		return
	}
	close(s.closing)
	t := time.AfterFunc(bound, s.cut)
	defer t.Stop()
	select {
	case <-s.done:
	case <-time.After(bound + time.Second): // Produce honours the cut: not expected
		log.Printf("persona-front: served log: not stopped %v after the close bound", time.Second)
	}
	s.cut()
	// an offer that passed its closed check just before close (a handler still running
	// after the gRPC server's stop) may have queued after the goroutine's last look
	s.dropQueued()
}

// logLimit: services/common/log_limit.py's LogLimit, the first line of a kind then one
// every interval, saying how many were held back.
type logLimit struct {
	mu       sync.Mutex
	interval time.Duration
	last     map[string]time.Time
	held     map[string]int
}

func newLogLimit(interval time.Duration) *logLimit {
	return &logLimit{interval: interval, last: map[string]time.Time{}, held: map[string]int{}}
}

func (l *logLimit) allow(kind string) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if last, ok := l.last[kind]; ok && now.Sub(last) < l.interval {
		l.held[kind]++
		return 0, false
	}
	l.last[kind] = now
	n := l.held[kind]
	delete(l.held, kind)
	return n, true
}

func heldBack(held int) string {
	if held == 0 {
		return ""
	}
	return " (" + strconv.Itoa(held) + " more like it since the last line)"
}

// CloseServedLog sends what the served log holds and stops it within bound (SIGTERM, after
// the gRPC server stopped); a no-op when it is off. It returns the rows sent, failed and
// dropped since the start.
func (f *Front) CloseServedLog(bound time.Duration) (sent, failed, dropped uint64) {
	if f.served == nil {
		return 0, 0, 0
	}
	f.served.close(bound)
	return f.served.sent.Value(), f.served.failed.Value(), f.served.dropped.Value()
}
