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

func TestConnsTakeTurns(t *testing.T) {
	var cs []*grpc.ClientConn
	for i := 0; i < 3; i++ {
		cc, err := grpc.Dial("127.0.0.1:1", grpc.WithInsecure()) // not connected until used
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, cc)
	}
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
	good, err := grpc.Dial("127.0.0.1:1", grpc.WithInsecure()) // IDLE: never used
	if err != nil {
		t.Fatal(err)
	}
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
