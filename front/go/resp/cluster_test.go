package resp

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeNode serves on lis until the test ends, answering every command with reply; dials
// counts the connections it accepted.
func fakeNode(t *testing.T, lis net.Listener, reply string) (addr string, dials *atomic.Int32) {
	t.Cleanup(func() { lis.Close() })
	dials = &atomic.Int32{}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			go answerWith(c, reply)
		}
	}()
	return lis.Addr().String(), dials
}

// localNode is fakeNode on a loopback port.
func localNode(t *testing.T, reply string) (string, *atomic.Int32) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return fakeNode(t, lis, reply)
}

// answerWith answers every command read from c with reply, until c fails.
func answerWith(c net.Conn, reply string) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n') // *N
		if err != nil {
			return
		}
		n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
		for i := 0; i < 2*n; i++ { // $len and the argument of each
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
		}
		if _, err := c.Write([]byte(reply)); err != nil {
			return
		}
	}
}

// clusterOver is an open cluster store whose slots go round nodes; slotReads counts the
// slot maps read.
func clusterOver(nodes []string, poolSize int) (s *Store, slotReads *atomic.Int32) {
	s = newStore(nodes, Auth{}, time.Second, poolSize)
	s.cluster = true
	var owner [Slots]string
	for i := range owner {
		owner[i] = nodes[i%len(nodes)]
	}
	slotReads = &atomic.Int32{}
	s.slots = func(string) ([Slots]string, error) { slotReads.Add(1); return owner, nil }
	if err := s.Relearn(); err != nil {
		panic(err)
	}
	s.open.Store(true)
	return s, slotReads
}

func getAll(n int) []Cmd {
	cmds := make([]Cmd, n)
	for i := range cmds {
		cmds[i] = Cmd{Slot: i, Args: [][]byte{[]byte("GET"), []byte("k" + strconv.Itoa(i))}}
	}
	return cmds
}

// More calls over several nodes at once than a pool has connections: every call gets its
// connections (taken in one order, none holds one another call waits for) and succeeds.
func TestConcurrentCallsOverNodesAllSucceed(t *testing.T) {
	var nodes []string
	for i := 0; i < 3; i++ {
		a, _ := localNode(t, ":1\r\n")
		nodes = append(nodes, a)
	}
	s, _ := clusterOver(nodes, 2)
	defer s.Close()
	cmds := getAll(3)
	var ok atomic.Int32
	errs := make(chan error, 16) // each goroutine's first
	var wg sync.WaitGroup
	t0 := time.Now()
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, err := s.Do(cmds, time.Now().Add(3*time.Second)); err != nil {
					errs <- err
					return
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if ok.Load() != 800 || time.Since(t0) > 30*time.Second {
		t.Fatalf("%d of 800 calls in %v; an error %v", ok.Load(), time.Since(t0), <-errs)
	}
}

// A call whose deadline has passed is a timeout that spends no pooled connection and
// starts no relearn: the one connection serves every call.
func TestExpiredCallKeepsTheConnection(t *testing.T) {
	addr, dials := localNode(t, ":1\r\n")
	s, slotReads := clusterOver([]string{addr}, 2)
	defer s.Close()
	good := func() {
		t.Helper()
		if _, err := s.Do(getAll(2), time.Now().Add(2*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	good()
	for i := 0; i < 3; i++ {
		for _, d := range []time.Duration{-time.Second, 0} {
			if _, err := s.Do(getAll(2), time.Now().Add(d)); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("expired by %v: %v", -d, err)
			}
		}
		good()
	}
	time.Sleep(50 * time.Millisecond) // a relearn would run in the background
	if dials.Load() != 1 || slotReads.Load() != 1 {
		t.Fatalf("%d dials, %d slot map reads", dials.Load(), slotReads.Load())
	}
}

// An error reply to INFO cluster (an ACL user without INFO) fails the open naming the
// reply, as the Python client raises; it is not "not a cluster".
func TestInfoErrorFailsOpen(t *testing.T) {
	addr, _ := localNode(t, "-NOPERM User u has no permissions to run the 'info' command\r\n")
	s, err := Open([]string{addr}, Auth{}, time.Second, 2)
	if err == nil {
		s.Close()
		t.Fatal("opened as a single node")
	}
	if !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("the reply not named: %v", err)
	}
}

// slotsReply is a CLUSTER SLOTS reply of one range served by host:port.
func slotsReply(lo, hi int, host string, port int) string {
	return "*1\r\n*3\r\n:" + strconv.Itoa(lo) + "\r\n:" + strconv.Itoa(hi) + "\r\n*2\r\n$" +
		strconv.Itoa(len(host)) + "\r\n" + host + "\r\n:" + strconv.Itoa(port) + "\r\n"
}

// A slot range out of 0..16383, or backwards, is a protocol error, not an index.
func TestSlotsOutOfRangeRefused(t *testing.T) {
	for _, r := range [][2]int{{-1, 5}, {0, Slots}, {10, 5}, {-3, -2}} {
		addr, _ := localNode(t, slotsReply(r[0], r[1], "127.0.0.1", 7000))
		s := newStore([]string{addr}, Auth{}, time.Second, 1)
		if _, err := s.slotsFrom(addr); !errors.Is(err, ErrProtocol) {
			t.Errorf("range %v: %v", r, err)
		}
	}
	addr, _ := localNode(t, slotsReply(0, Slots-1, "127.0.0.1", 7000))
	owner, err := newStore([]string{addr}, Auth{}, time.Second, 1).slotsFrom(addr)
	if err != nil || owner[0] != "127.0.0.1:7000" || owner[Slots-1] != "127.0.0.1:7000" {
		t.Fatalf("the whole range: %v %q %q", err, owner[0], owner[Slots-1])
	}
}

// A node named without a host is at the host of the node asked, an IPv6 one too.
func TestSlotsEmptyHostIsTheIPv6SeedsHost(t *testing.T) {
	lis, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	addr, _ := fakeNode(t, lis, slotsReply(0, Slots-1, "", port))
	owner, err := newStore([]string{addr}, Auth{}, time.Second, 1).slotsFrom(addr)
	if want := "[::1]:" + strconv.Itoa(port); err != nil || owner[0] != want {
		t.Fatalf("%v %q, want %q", err, owner[0], want)
	}
}
