package front

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/protobuf/types/known/emptypb"
)

// liveConns: n connections to a live gRPC server, READY (a connection to a closed port
// falls into TRANSIENT_FAILURE at once, which pick passes over).
func liveConns(t *testing.T, n int) []*grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cs []*grpc.ClientConn
	for i := 0; i < n; i++ {
		cc, err := grpc.DialContext(ctx, lis.Addr().String(), grpc.WithInsecure(), grpc.WithBlock())
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, cc)
	}
	return cs
}

func TestConnsTakeTurns(t *testing.T) {
	cs := liveConns(t, 3)
	c := NewConns(cs)
	defer c.Close()
	seen := map[*grpc.ClientConn]int{}
	for i := 0; i < 9; i++ {
		got := c.pick()
		if got != cs[i%3] {
			t.Fatalf("call %d went to another connection than its turn's", i)
		}
		seen[got]++
	}
	if len(seen) != 3 || seen[cs[0]] != 3 || seen[cs[1]] != 3 || seen[cs[2]] != 3 {
		t.Fatalf("uneven turns: %v", seen)
	}
}

func TestConnsPassOverFailingOnes(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close() // nothing listens there any more
	bad, err := grpc.Dial(dead, grpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	good := liveConns(t, 1)[0]
	c := NewConns([]*grpc.ClientConn{bad, good})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = bad.Invoke(ctx, "/x.Y/Z", &emptypb.Empty{}, &emptypb.Empty{}) // fails: a connect is tried
	for s := bad.GetState(); s != connectivity.TransientFailure; s = bad.GetState() {
		if !bad.WaitForStateChange(ctx, s) {
			t.Fatalf("never in TRANSIENT_FAILURE (%v)", s)
		}
	}
	for i := 0; i < 4; i++ {
		if c.pick() != good {
			t.Fatalf("pick %d: the failing connection was taken while another was not failing", i)
		}
	}
}
