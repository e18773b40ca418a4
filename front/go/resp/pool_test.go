package resp

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestRelearnerSingleFlightMinInterval(t *testing.T) {
	now := time.Unix(1000, 0)
	r := relearner{min: time.Second, now: func() time.Time { return now }}
	if !r.begin() {
		t.Fatal("the first relearn must start")
	}
	if r.begin() {
		t.Fatal("a second one started while the first runs")
	}
	r.end()
	now = now.Add(500 * time.Millisecond)
	if r.begin() {
		t.Fatal("started again within the minimum interval")
	}
	now = now.Add(600 * time.Millisecond)
	if !r.begin() {
		t.Fatal("not started after the minimum interval")
	}
	r.end()
	// many callers at once: exactly one starts, none waits
	now = now.Add(2 * time.Second)
	var started atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r.begin() {
				started.Add(1)
			}
		}()
	}
	wg.Wait()
	if started.Load() != 1 {
		t.Fatalf("%d relearns started at once", started.Load())
	}
}

func TestRelearnTriesLiveNodesFirstAndDropsGonePools(t *testing.T) {
	s := newStore([]string{"seed:1"}, Auth{}, time.Second, 2)
	s.cluster = true
	s.open.Store(true)
	var asked []string
	var owner [Slots]string
	for i := range owner {
		owner[i] = "a:1"
	}
	s.slots = func(addr string) ([Slots]string, error) {
		asked = append(asked, addr)
		if addr == "seed:1" {
			return owner, nil
		}
		return owner, errors.New("down")
	}
	if err := s.Relearn(); err != nil || len(asked) != 1 || s.pools["a:1"] == nil {
		t.Fatalf("%v %v", err, asked)
	}
	old := s.pools["a:1"]
	for i := range owner {
		owner[i] = "b:1"
	}
	s.slots = func(addr string) ([Slots]string, error) {
		asked = append(asked, addr)
		return owner, nil
	}
	asked = nil
	if err := s.Relearn(); err != nil || len(asked) != 1 || asked[0] != "a:1" {
		t.Fatalf("live node not asked first: %v %v", err, asked)
	}
	if s.pools["a:1"] != nil || s.pools["b:1"] == nil || !old.closed.Load() {
		t.Fatal("the pool of a node no longer in the map was kept")
	}
	// an uncovered slot starts one background relearn, rate limited; the relearnt map
	// leaves the slot uncovered too, so every call below meets it whenever the relearn ends
	owner[5] = ""
	s.mu.Lock()
	s.owner[5] = ""
	s.mu.Unlock()
	var relearnt atomic.Int32
	done := make(chan struct{}, 4)
	s.SetOnRelearn(func(error) { relearnt.Add(1); done <- struct{}{} })
	s.relearns.last = time.Time{}
	for i := 0; i < 3; i++ {
		if _, err := s.Do([]Cmd{{Slot: 5, Args: [][]byte{[]byte("GET"), []byte("k")}}},
			time.Now().Add(time.Second)); err != ErrUncovered {
			t.Fatal(err)
		}
	}
	<-done
	time.Sleep(20 * time.Millisecond)
	if relearnt.Load() != 1 {
		t.Fatalf("%d relearns", relearnt.Load())
	}
}

func TestPoolCapsOpenConnections(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			defer c.Close()
		}
	}()
	p := NewPool(lis.Addr().String(), Auth{}, time.Second, 2)
	a, err := p.Get(time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Get(time.Now().Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	_, err = p.Get(time.Now().Add(50 * time.Millisecond))
	if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(t0) < 40*time.Millisecond {
		t.Fatalf("a third connection: %v after %v", err, time.Since(t0))
	}
	if p.Open() != 2 {
		t.Fatalf("open %d", p.Open())
	}
	// a waiter gets the connection put back
	got := make(chan *Conn)
	go func() {
		c, err := p.Get(time.Now().Add(time.Second))
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	time.Sleep(20 * time.Millisecond)
	p.Put(a)
	if c := <-got; c != a {
		t.Fatal("the waiter did not get the idle connection")
	}
	// a discarded one frees its place: a new one is dialled
	p.Discard(b)
	c, err := p.Get(time.Now().Add(time.Second))
	if err != nil || c == a || p.Open() != 2 {
		t.Fatalf("%v open %d", err, p.Open())
	}
	p.Discard(a)
	p.Discard(c)
	p.Close()
	if p.Open() != 0 {
		t.Fatalf("open %d after close", p.Open())
	}
}
