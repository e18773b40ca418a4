package resp

import (
	"bufio"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Slots is the number of cluster hash slots.
const Slots = 16384

var crcTable = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for j := 0; j < 8; j++ {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

// CRC16 is the CRC16-CCITT (XMODEM) of the cluster spec.
func CRC16(b []byte) uint16 {
	var crc uint16
	for _, x := range b {
		crc = crc<<8 ^ crcTable[byte(crc>>8)^x]
	}
	return crc
}

// KeySlot is the cluster slot of key: of its hash tag, the bytes between the first "{"
// and the next "}" when they are not empty, else of the whole key.
func KeySlot(key []byte) int {
	for i, c := range key {
		if c == '{' {
			for j := i + 1; j < len(key); j++ {
				if key[j] == '}' {
					if j > i+1 {
						key = key[i+1 : j]
					}
					return int(CRC16(key) % Slots)
				}
			}
			break
		}
	}
	return int(CRC16(key) % Slots)
}

// Cmd is one command and the slot that routes it (ignored on a single node).
type Cmd struct {
	Slot int
	Args [][]byte
}

// ErrRedirect: a reply was MOVED / ASK / TRYAGAIN / CLUSTERDOWN; the slot map is learnt
// again, the caller answers this request some other way.
var ErrRedirect = errors.New("resp: cluster redirect")

// ErrUncovered: no node serves a command's slot in the current map.
var ErrUncovered = errors.New("resp: slot not covered")

// Store sends commands to a single node or to the primaries of a cluster.
type Store struct {
	cluster bool
	seeds   []string
	auth    Auth
	timeout time.Duration
	size    int

	mu    sync.RWMutex
	owner [Slots]string // cluster: primary address per slot ("" = not covered)
	pools map[string]*Pool

	relearning sync.Mutex

	// OnRelearn, when set before the first Do, is told how each relearn a redirect started
	// ended (nil: the new slot map is in place).
	OnRelearn func(error)
}

// Open connects to addrs (one node, or seed nodes of a cluster) and decides the mode the
// way the Python client does (INFO cluster: cluster_enabled). The database is only
// selected on a single node.
func Open(addrs []string, auth Auth, dialTimeout time.Duration, poolSize int) (*Store, error) {
	s := &Store{seeds: addrs, auth: auth, timeout: dialTimeout, size: poolSize, pools: map[string]*Pool{}}
	var lastErr error
	for _, a := range addrs {
		c, err := Dial(a, Auth{Username: auth.Username, Password: auth.Password}, dialTimeout)
		if err != nil {
			lastErr = err
			continue
		}
		rs, err := c.Do(AppendCommand(nil, []byte("INFO"), []byte("cluster")), 1, time.Now().Add(dialTimeout))
		c.Close()
		if err != nil {
			lastErr = err
			continue
		}
		s.cluster = strings.Contains(string(rs[0].Str), "cluster_enabled:1")
		if !s.cluster {
			s.seeds = []string{a}
			s.pools[a] = NewPool(a, auth, dialTimeout, poolSize)
			return s, nil
		}
		s.auth.DB = 0
		return s, s.Relearn()
	}
	return nil, fmt.Errorf("no store node answered: %v", lastErr)
}

// Cluster says whether the store is a cluster.
func (s *Store) Cluster() bool { return s.cluster }

// Relearn reads CLUSTER SLOTS from a known node and replaces the slot map.
func (s *Store) Relearn() error {
	s.relearning.Lock()
	defer s.relearning.Unlock()
	tried := append([]string(nil), s.seeds...)
	s.mu.RLock()
	for a := range s.pools {
		tried = append(tried, a)
	}
	s.mu.RUnlock()
	var lastErr error
	for _, a := range tried {
		owner, err := s.slotsFrom(a)
		if err != nil {
			lastErr = err
			continue
		}
		s.mu.Lock()
		s.owner = owner
		for _, o := range owner {
			if o != "" && s.pools[o] == nil {
				s.pools[o] = NewPool(o, s.auth, s.timeout, s.size)
			}
		}
		s.mu.Unlock()
		return nil
	}
	return fmt.Errorf("CLUSTER SLOTS: %v", lastErr)
}

func (s *Store) slotsFrom(addr string) (owner [Slots]string, err error) {
	c, err := Dial(addr, s.auth, s.timeout)
	if err != nil {
		return owner, err
	}
	defer c.Close()
	rs, err := c.Do(AppendCommand(nil, []byte("CLUSTER"), []byte("SLOTS")), 1, time.Now().Add(s.timeout))
	if err != nil {
		return owner, err
	}
	if e := rs[0].Err(); e != "" || rs[0].Kind != '*' {
		return owner, fmt.Errorf("%s: CLUSTER SLOTS: %s", addr, e)
	}
	host := addr[:strings.LastIndex(addr, ":")]
	for _, r := range rs[0].Array {
		if len(r.Array) < 3 || len(r.Array[2].Array) < 2 {
			return owner, ErrProtocol
		}
		lo, hi, node := r.Array[0].Int, r.Array[1].Int, r.Array[2].Array
		h := string(node[0].Str)
		if h == "" || h == "?" {
			h = host
		}
		a := h + ":" + strconv.FormatInt(node[1].Int, 10)
		if strings.Contains(h, ":") {
			a = "[" + h + "]:" + strconv.FormatInt(node[1].Int, 10)
		}
		for sl := lo; sl <= hi && sl < Slots; sl++ {
			owner[sl] = a
		}
	}
	return owner, nil
}

type nodeBatch struct {
	pool *Pool
	conn *Conn
	idx  []int
	buf  []byte
	err  error
}

// Do sends every command (one pipelined write per node, all nodes written before any
// reply is read) and returns the replies in command order. A redirect reply starts a
// relearn of the slot map in the background and returns ErrRedirect; error replies are
// returned as replies.
func (s *Store) Do(cmds []Cmd, deadline time.Time) ([]Reply, error) {
	batches := map[string]*nodeBatch{}
	s.mu.RLock()
	for i, c := range cmds {
		addr := s.seeds[0]
		if s.cluster {
			addr = s.owner[c.Slot]
		}
		if addr == "" {
			s.mu.RUnlock()
			return nil, ErrUncovered
		}
		b := batches[addr]
		if b == nil {
			b = &nodeBatch{pool: s.pools[addr]}
			batches[addr] = b
		}
		b.idx = append(b.idx, i)
		b.buf = AppendCommand(b.buf, c.Args...)
	}
	s.mu.RUnlock()
	for _, b := range batches {
		if b.conn, b.err = b.pool.Get(); b.err == nil {
			if b.err = b.conn.Write(b.buf, deadline); b.err != nil {
				b.conn.Close()
				b.conn = nil
			}
		}
	}
	out := make([]Reply, len(cmds))
	var firstErr error
	for _, b := range batches {
		if b.err == nil {
			var rs []Reply
			if rs, b.err = b.conn.Read(len(b.idx)); b.err == nil {
				b.pool.Put(b.conn)
				for j, i := range b.idx {
					out[i] = rs[j]
				}
			} else {
				b.conn.Close()
			}
		}
		if b.err != nil && firstErr == nil {
			firstErr = b.err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	for i := range out {
		if redirected(out[i].Err()) {
			if s.cluster {
				go func() {
					err := s.Relearn()
					if s.OnRelearn != nil {
						s.OnRelearn(err)
					}
				}()
			}
			return nil, ErrRedirect
		}
	}
	return out, nil
}

func redirected(e string) bool {
	for _, p := range []string{"MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN"} {
		if strings.HasPrefix(e, p) {
			return true
		}
	}
	return false
}

// Close closes every idle connection.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.pools {
		p.Close()
	}
}

// ParseReplies reads every reply in raw (for tests).
func ParseReplies(raw string) ([]Reply, error) {
	r := bufio.NewReader(strings.NewReader(raw))
	var out []Reply
	for {
		if _, err := r.Peek(1); err != nil {
			return out, nil
		}
		rep, err := ReadReply(r)
		if err != nil {
			return out, err
		}
		out = append(out, rep)
	}
}
