package front

import (
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"persona/front/go/metrics"
)

func TestLimiter(t *testing.T) {
	l := &limiter{max: 2}
	if !l.acquire() || !l.acquire() || l.acquire() || l.inFlight() != 2 {
		t.Fatal("two places, not a third")
	}
	l.release()
	if !l.acquire() || l.acquire() {
		t.Fatal("a released place taken once")
	}
	free := &limiter{} // 0: no limit, still counted
	for i := 0; i < 1000; i++ {
		if !free.acquire() {
			t.Fatal("refused without a limit")
		}
	}
	if free.inFlight() != 1000 {
		t.Fatal(free.inFlight())
	}
	// concurrent takers never hold more than max places
	l = &limiter{max: 3}
	var wg sync.WaitGroup
	var mu sync.Mutex
	most := int64(0)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				if l.acquire() {
					mu.Lock()
					if n := l.inFlight(); n > most {
						most = n
					}
					mu.Unlock()
					l.release()
				}
			}
		}()
	}
	wg.Wait()
	if most > 3 || l.inFlight() != 0 {
		t.Fatal(most, l.inFlight())
	}
}

// A call beyond the limit is refused as grpcio refuses it (local or forwarded), counted;
// once the held call ends, calls are answered again.
func TestConcurrencyLimitRefuses(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	addr := serveRaw(t, func(_ interface{}, ss grpc.ServerStream) error {
		in := &frame{}
		if err := ss.RecvMsg(in); err != nil {
			return err
		}
		if m, _ := grpc.MethodFromServerStream(ss); m == GetEmbeddingsMethod { // held
			entered <- struct{}{}
			<-release
		}
		return ss.SendMsg(&frame{[]byte("up")})
	})
	var once sync.Once // a failed test releases the held call too
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	conn, err := grpc.Dial(addr, DialOptions(nil)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	reg := &metrics.Registry{}
	f := New(conn, nil, Config{MaxConcurrentRPCs: 1, Metrics: reg}) // dim unknown: forwarded
	fc := frontOver(t, f)
	held := make(chan error, 1)
	go func() { _, err := call(fc, GetEmbeddingsMethod); held <- err }()
	<-entered
	for _, m := range []string{GetEmbeddingsMethod, "/persona.v1.UserEmbeddingService/GetModelInfo",
		"/no.such.Service/Method"} {
		_, err := call(fc, m)
		if status.Code(err) != codes.ResourceExhausted ||
			status.Convert(err).Message() != "Concurrent RPC limit exceeded!" {
			t.Fatalf("%s: %v", m, err)
		}
	}
	expect(t, scrape(t, reg), `persona_front_rejected_total{reason="concurrency"} 3`,
		"persona_front_in_flight_calls 1")
	once.Do(func() { close(release) })
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	if f.calls.inFlight() != 0 {
		t.Fatal("a place kept after the call ended")
	}
	if got, err := call(fc, "/no.such.Service/Method"); err != nil || string(got) != "up" {
		t.Fatalf("%q %v", got, err)
	}
	if f.Forwarded.Load() != 1 || f.m.calls.With("other", "other", "OK").Value() != 1 {
		t.Fatal("a refused call counted as forwarded")
	}
}
