package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// fakeBroker answers ApiVersions, Metadata and Produce for one topic as a single broker
// (node 0) leading every partition; produce decides each partition's error code.
type fakeBroker struct {
	t        *testing.T
	lis      net.Listener
	topic    string
	parts    int
	versions map[int16][2]int16
	mu       sync.Mutex
	known    bool // the topic exists
	produce  func(part int32, nth int) (code int16, hangUp bool)
	got      map[int32][]Record // what was written, by partition
	calls    map[int16]int      // requests by api key
	seen     map[int16]int16    // the version of each api used
	conns    []net.Conn         // accepted, for closeAll
}

// closeAll closes the broker's side of every connection (its idle timeout, a restart).
func (b *fakeBroker) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.conns {
		c.Close()
	}
	b.conns = nil
}

func newFakeBroker(t *testing.T, topic string, parts int) *fakeBroker {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBroker{t: t, lis: lis, topic: topic, parts: parts, known: true,
		versions: map[int16][2]int16{0: {0, 9}, 3: {0, 12}, 18: {0, 3}},
		produce:  func(int32, int) (int16, bool) { return 0, false },
		got:      map[int32][]Record{}, calls: map[int16]int{}, seen: map[int16]int16{}}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.mu.Unlock()
			go b.serve(c)
		}
	}()
	t.Cleanup(func() { lis.Close() })
	return b
}

func (b *fakeBroker) addr() string { return b.lis.Addr().String() }

// settled: the broker's state is read after its last answer (the race detector knows).
func (b *fakeBroker) settled() {
	b.mu.Lock()
	defer b.mu.Unlock()
}

func (b *fakeBroker) serve(c net.Conn) {
	defer c.Close()
	for {
		var size [4]byte
		if _, err := io.ReadFull(c, size[:]); err != nil {
			return
		}
		req := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(c, req); err != nil {
			return
		}
		d := &dec{b: req}
		api, v, corr := d.i16(), d.i16(), d.i32()
		d.str() // client id
		b.mu.Lock()
		b.calls[api]++
		b.seen[api] = v
		e := &enc{}
		e.i32(corr)
		hangUp := false
		switch api {
		case apiApiVersions:
			e.i16(0)
			e.i32(int32(len(b.versions)))
			for _, k := range []int16{0, 3, 18} {
				if r, ok := b.versions[k]; ok {
					e.i16(k)
					e.i16(r[0])
					e.i16(r[1])
				}
			}
		case apiMetadata:
			b.metadata(e, v)
		case apiProduce:
			hangUp = b.produced(d, e, v)
		}
		b.mu.Unlock()
		binary.BigEndian.PutUint32(size[:], uint32(len(e.b)))
		if hangUp {
			return // the request was read (and maybe written), the answer is lost
		}
		if _, err := c.Write(append(size[:], e.b...)); err != nil {
			return
		}
	}
}

func (b *fakeBroker) metadata(e *enc, v int16) {
	host, port, _ := net.SplitHostPort(b.addr())
	p, _ := strconv.Atoi(port)
	e.i32(0) // throttle
	e.i32(1)
	e.i32(0)
	e.str(host)
	e.i32(int32(p))
	e.i16(-1) // rack
	e.i16(-1) // cluster id
	e.i32(0)  // controller
	e.i32(1)
	if !b.known {
		e.i16(errUnknownTopicPartition)
		e.str(b.topic)
		e.i8(0)
		e.i32(0)
	} else {
		e.i16(0)
		e.str(b.topic)
		e.i8(0)
		e.i32(int32(b.parts))
		for i := b.parts - 1; i >= 0; i-- { // any order
			e.i16(0)
			e.i32(int32(i))
			e.i32(0) // leader
			if v >= 7 {
				e.i32(0)
			}
			for k := 0; k < 2; k++ { // replicas, isr
				e.i32(1)
				e.i32(0)
			}
			if v >= 5 {
				e.i32(0)
			}
		}
	}
	if v >= 8 {
		e.i32(0)
		e.i32(0)
	}
}

// produced reads a Produce request and writes its answer; true: hang up instead.
func (b *fakeBroker) produced(d *dec, e *enc, v int16) bool {
	d.str() // transactional id
	if acks := d.i16(); acks != -1 {
		b.t.Errorf("acks %d", acks)
	}
	d.i32()
	hangUp := false
	e.i32(int32(d.array(1)))
	for i, n := 0, 1; i < n; i++ {
		name := d.str()
		np := d.array(4)
		e.str(name)
		e.i32(int32(np))
		for j := 0; j < np; j++ {
			part := d.i32()
			batch := d.take(int(d.i32()))
			recs, _, err := decodeBatch(batch)
			if err != nil {
				b.t.Errorf("partition %d: %v", part, err)
			}
			code, hang := b.produce(part, len(b.got[part]))
			hangUp = hangUp || hang
			if code == 0 {
				b.got[part] = append(b.got[part], recs...)
			}
			e.i32(part)
			e.i16(code)
			e.b = append(e.b, make([]byte, 16)...) // base offset, log append time
			if v >= 5 {
				e.b = append(e.b, make([]byte, 8)...)
			}
			if v >= 8 {
				e.i32(0)
				e.i16(-1)
			}
		}
	}
	e.i32(0) // throttle
	return hangUp
}

func records(n int) []Record {
	out := make([]Record, n)
	for i := range out {
		out[i] = Record{Key: []byte(fmt.Sprintf("u%d", i)), Value: []byte(strconv.Itoa(i))}
	}
	return out
}

func produce(t *testing.T, b *fakeBroker, recs []Record, within time.Duration, giveUp chan struct{}) (
	int, error, time.Duration) {
	p := NewProducer(Config{Bootstrap: []string{"127.0.0.1:1", b.addr()}, Topic: b.topic})
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	t0 := time.Now()
	n, err := p.Produce(ctx, recs, giveUp)
	return n, err, time.Since(t0)
}

func TestProduceWritesEachKeyToItsPartition(t *testing.T) {
	for _, vs := range [][2]int16{{3, 4}, {8, 8}} { // Produce v3 / Metadata v4, and v8 / v8
		b := newFakeBroker(t, "served", 3)
		b.versions[apiProduce], b.versions[apiMetadata] = [2]int16{0, vs[0]}, [2]int16{0, vs[1]}
		recs := records(50)
		n, err, _ := produce(t, b, recs, 10*time.Second, nil)
		b.settled()
		if n != 50 || err != nil {
			t.Fatalf("versions %v: sent %d, %v", vs, n, err)
		}
		if b.seen[apiProduce] != vs[0] || b.seen[apiMetadata] != vs[1] {
			t.Fatalf("versions used %v, want %v", b.seen, vs)
		}
		total := 0
		for part, got := range b.got {
			total += len(got)
			for _, r := range got { // each where librdkafka puts it, in the order given
				if Partition(r.Key, 3, nil) != int(part) {
					t.Fatalf("%s in partition %d", r.Key, part)
				}
			}
		}
		if total != 50 || b.calls[apiProduce] != 1 {
			t.Fatalf("%d records in %d requests", total, b.calls[apiProduce])
		}
	}
}

func TestProduceRelearnsAfterNotLeader(t *testing.T) {
	b := newFakeBroker(t, "served", 2)
	b.produce = func(part int32, _ int) (int16, bool) {
		if b.calls[apiProduce] == 1 && part == 1 {
			return errNotLeader, false
		}
		return 0, false
	}
	n, err, _ := produce(t, b, records(20), 10*time.Second, nil)
	b.settled()
	if n != 20 || err != nil || b.calls[apiMetadata] != 2 || len(b.got[0])+len(b.got[1]) != 20 {
		t.Fatalf("sent %d (%v), metadata asked %d times, got %v", n, err, b.calls[apiMetadata],
			b.got)
	}
}

func TestProduceUnknownTopicFailsAfterTheBound(t *testing.T) {
	b := newFakeBroker(t, "served", 2)
	b.known = false
	// 2 s: room for 3 metadata rounds (backoffs 100, 200 ms) on a loaded machine
	n, err, took := produce(t, b, records(5), 2*time.Second, nil)
	b.settled()
	if n != 0 || !errors.Is(err, ErrUnknownTopic) || took < 1900*time.Millisecond ||
		b.calls[apiMetadata] < 3 || b.calls[apiProduce] != 0 {
		t.Fatalf("sent %d, %v in %v; metadata %d, produce %d", n, err, took,
			b.calls[apiMetadata], b.calls[apiProduce])
	}
	giveUp := make(chan struct{})
	close(giveUp) // closing: one attempt, no retries
	n, err, took = produce(t, b, records(5), time.Minute, giveUp)
	b.settled()
	if n != 0 || !errors.Is(err, ErrUnknownTopic) || took > 30*time.Second {
		t.Fatalf("given up: sent %d, %v in %v", n, err, took)
	}
}

func TestProduceDoesNotResendWhatMayBeWritten(t *testing.T) {
	b := newFakeBroker(t, "served", 1)
	b.produce = func(int32, int) (int16, bool) { return 0, b.calls[apiProduce] == 1 }
	n, err, _ := produce(t, b, records(4), 10*time.Second, nil)
	b.settled()
	var ce *connError
	if n != 0 || !errors.As(err, &ce) || b.calls[apiProduce] != 1 || len(b.got[0]) != 4 {
		t.Fatalf("sent %d (%v); produce asked %d times, written %d", n, err, b.calls[apiProduce],
			len(b.got[0]))
	}
}

func TestProduceSplitsBigBatches(t *testing.T) {
	b := newFakeBroker(t, "served", 1)
	recs := records(40)
	for i := range recs {
		recs[i].Value = make([]byte, 100<<10) // 4 MB: batches of about 256 KiB, in order
	}
	n, err, _ := produce(t, b, recs, 20*time.Second, nil)
	b.settled()
	if n != 40 || err != nil || b.calls[apiProduce] < 10 || len(b.got[0]) != 40 {
		t.Fatalf("sent %d (%v) in %d requests", n, err, b.calls[apiProduce])
	}
	for i, r := range b.got[0] {
		if string(r.Key) != fmt.Sprintf("u%d", i) {
			t.Fatalf("record %d is %s", i, r.Key)
		}
	}
}
