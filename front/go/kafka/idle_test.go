package kafka

import (
	"context"
	"testing"
	"time"
)

// A broker that closed a connection while it was idle (connections.max.idle.ms, a
// restart): the next Produce finds it closed before writing, dials again and loses nothing.
func TestIdleConnectionClosedByTheBrokerIsReplaced(t *testing.T) {
	b := newFakeBroker(t, "served", 1)
	p := NewProducer(Config{Bootstrap: []string{b.addr()}, Topic: b.topic,
		IdleProbe: time.Nanosecond}) // every reuse probed
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := p.Produce(ctx, records(3), nil); n != 3 || err != nil {
		t.Fatal(n, err)
	}
	b.closeAll()
	// the FIN reaches the producer's socket: wait on that, not on a duration
	for deadline := time.Now().Add(5 * time.Second); ; {
		p.cmu.Lock()
		var alive bool
		for _, c := range p.conns {
			alive = alive || c.alive()
		}
		p.cmu.Unlock()
		if !alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the producer's connections still read as alive after the broker closed them")
		}
		time.Sleep(5 * time.Millisecond)
	}
	n, err := p.Produce(ctx, records(3), nil)
	b.settled()
	if n != 3 || err != nil || len(b.got[0]) != 6 {
		t.Fatalf("after the broker closed the idle connection: sent %d of 3 (%v); broker holds %d of 6",
			n, err, len(b.got[0]))
	}
}

// A live connection reads as alive (the probe does not eat an answer or break it).
func TestLiveConnectionReadsAlive(t *testing.T) {
	b := newFakeBroker(t, "served", 1)
	p := NewProducer(Config{Bootstrap: []string{b.addr()}, Topic: b.topic,
		IdleProbe: time.Millisecond})
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 3; i++ {
		time.Sleep(2 * time.Millisecond) // idle past IdleProbe: probed before each request
		if n, err := p.Produce(ctx, records(2), nil); n != 2 || err != nil {
			t.Fatal(i, n, err)
		}
	}
	b.settled()
	if len(b.got[0]) != 6 {
		t.Fatalf("broker holds %d of 6", len(b.got[0]))
	}
}
