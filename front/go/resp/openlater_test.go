package resp

import (
	"errors"
	"net"
	"strconv"
	"testing"
	"time"
)

// A store that answers only later: OpenLater returns at once, not open (Do fails
// ErrNotOpen, each failed try is heard), and opens once a node answers INFO cluster.
func TestOpenLaterOpensWhenTheStoreAnswers(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there yet
	tries := make(chan error, 64)
	s := OpenLater([]string{addr}, Auth{}, time.Second, 2, func(err error) {
		select {
		case tries <- err:
		default:
		}
	})
	defer s.Close()
	if s.Open() || s.Cluster() {
		t.Fatal("open before any node answered")
	}
	if _, err := s.Do([]Cmd{{Args: [][]byte{[]byte("GET"), []byte("k")}}}, time.Now().Add(time.Second)); !errors.Is(err, ErrNotOpen) {
		t.Fatalf("Do before open: %v", err)
	}
	if err := <-tries; err == nil {
		t.Fatal("a failed try reported nil")
	}
	lis, err = net.Listen("tcp", addr) // the node comes up: a single node, not a cluster
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	defer lis.Close()
	go answerAll(lis)
	for deadline := time.Now().Add(10 * time.Second); !s.Open(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not open 10 s after the node came up")
		}
	}
	if s.Cluster() {
		t.Fatal("a single node read as a cluster")
	}
}

// answerAll answers every connection lis accepts with answerInfo, until lis is closed.
func answerAll(lis net.Listener) {
	for {
		c, err := lis.Accept()
		if err != nil {
			return
		}
		go answerInfo(c)
	}
}

// answerInfo answers every command with INFO cluster's reply of a single node.
func answerInfo(c net.Conn) {
	body := "# Cluster\r\ncluster_enabled:0\r\n"
	answerWith(c, "$"+strconv.Itoa(len(body))+"\r\n"+body+"\r\n")
}
