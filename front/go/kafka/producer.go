package kafka

import (
	"context"
	"errors"
	"math/rand"
	"sort"
	"sync"
	"time"
)

// Config of a Producer.
type Config struct {
	Bootstrap     []string      // HOST:PORT of brokers to ask first
	Topic         string        // the one topic it writes
	ClientID      string        // "" : persona-front
	DialTimeout   time.Duration // connect + ApiVersions at most (0: 5 s)
	MaxBatchBytes int           // one RecordBatch at most about this (0: 256 KiB, as batch.size)
	IdleProbe     time.Duration // a connection idle this long is probed before use (0: 1 s)
}

// Producer writes keyed records to one topic, acks=-1 (all in-sync replicas). Records go
// to librdkafka's partition for their key (Partition); those of one partition keep their
// order. Metadata is learnt at first use, every 5 min (librdkafka's
// topic.metadata.refresh.interval.ms), and again after NOT_LEADER / UNKNOWN_TOPIC / a
// connection error. Not idempotent: a request whose answer is lost (the connection broke
// after it was written, a timeout) is not sent again, its records count as failed, so
// there are no duplicates, but such records may still have been written.
type Producer struct {
	cfg   Config
	mu    sync.Mutex // one Produce at a time
	cmu   sync.Mutex // conns
	conns map[string]*conn
	meta  *topicMeta
	stale bool
	rnd   *rand.Rand
}

const (
	metaMaxAge = 5 * time.Minute
	backoffMin = 100 * time.Millisecond
	backoffMax = time.Second
)

// NewProducer makes a Producer; nothing is dialled before the first Produce.
func NewProducer(cfg Config) *Producer {
	if cfg.ClientID == "" {
		cfg.ClientID = "persona-front"
	}
	if cfg.IdleProbe <= 0 {
		cfg.IdleProbe = time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = 256 << 10
	}
	return &Producer{cfg: cfg, conns: map[string]*conn{},
		rnd: rand.New(rand.NewSource(time.Now().UnixNano()))}
}

// Produce writes recs and waits for their acks; it retries what the brokers did not write
// (relearning the metadata, backing off 0.1 .. 1 s) until ctx is done or giveUp is closed
// (then only the attempt under way finishes). It returns how many records were
// acknowledged and, when some were not, the last error met.
func (p *Producer) Produce(ctx context.Context, recs []Record, giveUp <-chan struct{}) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	parts := make([]int32, len(recs))
	pending := make([]int, len(recs))
	for i := range recs {
		parts[i], pending[i] = -1, i
	}
	sent, wait := 0, backoffMin
	var last error
	for len(pending) > 0 {
		var n int
		var err error
		pending, n, err = p.attempt(ctx, recs, parts, pending)
		sent += n
		if err != nil {
			last = err
		}
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return sent, last
		case <-giveUp:
			return sent, last
		case <-time.After(wait):
		}
		if wait *= 2; wait > backoffMax {
			wait = backoffMax
		}
	}
	if sent == len(recs) {
		return sent, nil // the errors met were retried away
	}
	return sent, last
}

// Close closes every connection.
func (p *Producer) Close() {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	for addr, c := range p.conns {
		c.close()
		delete(p.conns, addr)
	}
}

// attempt sends the pending records once: it returns those to retry, how many were
// acknowledged, and the error met (records failed for good are dropped from pending).
func (p *Producer) attempt(ctx context.Context, recs []Record, parts []int32, pending []int) (
	[]int, int, error) {
	m, err := p.metadata(ctx)
	if err != nil {
		return pending, 0, err
	}
	n := len(m.leaders)
	byLeader := map[int32]map[int32][]int{}
	var left []int
	var last error
	for _, i := range pending {
		if parts[i] < 0 || int(parts[i]) >= n { // a topic made again with fewer partitions
			parts[i] = int32(Partition(recs[i].Key, n, p.rnd.Intn))
		}
		leader := m.leaders[parts[i]]
		if _, ok := m.brokers[leader]; !ok {
			left, last, p.stale = append(left, i), Error(errLeaderNotAvailable), true
			continue
		}
		if byLeader[leader] == nil {
			byLeader[leader] = map[int32][]int{}
		}
		byLeader[leader][parts[i]] = append(byLeader[leader][parts[i]], i)
	}
	results := make(chan sendResult, len(byLeader))
	for leader, byPart := range byLeader {
		go func(addr string, byPart map[int32][]int) {
			results <- p.sendTo(ctx, addr, recs, byPart)
		}(m.brokers[leader], byPart)
	}
	sent := 0
	for range byLeader {
		r := <-results
		sent += r.sent
		left = append(left, r.retry...)
		if r.err != nil {
			last = r.err
		}
		if len(r.retry) > 0 {
			p.stale = true
		}
	}
	return left, sent, last
}

// metadata: the topic's, learnt again when stale or older than metaMaxAge; the brokers of
// the last answer are asked before the bootstrap ones.
func (p *Producer) metadata(ctx context.Context) (*topicMeta, error) {
	if p.meta != nil && !p.stale && time.Since(p.meta.at) < metaMaxAge {
		return p.meta, nil
	}
	var addrs []string
	if p.meta != nil {
		for _, a := range p.meta.brokers {
			addrs = append(addrs, a)
		}
		sort.Strings(addrs)
	}
	addrs = append(addrs, p.cfg.Bootstrap...)
	last := errors.New("kafka: no broker to ask")
	for _, a := range addrs {
		c, err := p.conn(ctx, a)
		if err == nil {
			var m *topicMeta
			if m, err = c.metadata(ctx, p.cfg.Topic); err == nil {
				p.meta, p.stale = m, false
				p.forgetOthers(m)
				return m, nil
			}
			p.drop(a, c, err)
		}
		last = err
		var ce *connError
		if !errors.As(err, &ce) || ctx.Err() != nil {
			return nil, err // a broker's answer (unknown topic...), or no time left
		}
	}
	return nil, last
}

// conn to addr: the open one, or a new one.
func (p *Producer) conn(ctx context.Context, addr string) (*conn, error) {
	p.cmu.Lock()
	c := p.conns[addr]
	p.cmu.Unlock()
	if c != nil && (c.idle() < p.cfg.IdleProbe || c.alive()) {
		return c, nil
	}
	if c != nil { // closed by the broker while idle: a new one, nothing was written
		p.forget(addr, c)
	}
	c, err := dial(ctx, addr, p.cfg.ClientID, p.cfg.DialTimeout)
	if err != nil {
		return nil, err
	}
	p.cmu.Lock()
	p.conns[addr] = c
	p.cmu.Unlock()
	return c, nil
}

// drop closes addr's connection after a connection error (others leave it open).
func (p *Producer) drop(addr string, c *conn, err error) {
	var ce *connError
	if errors.As(err, &ce) {
		p.forget(addr, c)
	}
}

// forget closes c and takes it out of the open connections if it is still addr's.
func (p *Producer) forget(addr string, c *conn) {
	c.close()
	p.cmu.Lock()
	if p.conns[addr] == c {
		delete(p.conns, addr)
	}
	p.cmu.Unlock()
}

// forgetOthers closes the connections to addresses m does not name (a bootstrap address
// the brokers advertise under another name): one connection per broker.
func (p *Producer) forgetOthers(m *topicMeta) {
	keep := map[string]bool{}
	for _, a := range m.brokers {
		keep[a] = true
	}
	p.cmu.Lock()
	defer p.cmu.Unlock()
	for a, c := range p.conns {
		if !keep[a] {
			c.close()
			delete(p.conns, a)
		}
	}
}
