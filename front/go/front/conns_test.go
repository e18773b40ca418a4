package front

import (
	"testing"

	"google.golang.org/grpc"
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
