package resp

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Cmd is one command and the slot that routes it (ignored on a single node).
type Cmd struct {
	Slot int
	Args [][]byte
}

// ErrRedirect: a reply was MOVED / ASK / TRYAGAIN / CLUSTERDOWN; the caller answers this
// request some other way (after a MOVED the slot map is learnt again).
var ErrRedirect = errors.New("resp: cluster redirect")

// ErrUncovered: no node serves a command's slot in the current map.
var ErrUncovered = errors.New("resp: slot not covered")

// ErrNotOpen: the store has not answered yet (OpenLater keeps trying).
var ErrNotOpen = errors.New("resp: the store has not answered yet")

// OpenRetry: how often OpenLater tries again.
const OpenRetry = time.Second

// RelearnInterval: slot maps are read again at most this often on demand (MOVED, a
// connection error in cluster mode, a slot not covered); RefreshInterval: and this often
// regardless.
const (
	RelearnInterval = time.Second
	RefreshInterval = 10 * time.Second
)

// relearner lets one slot-map read run at a time, at most once per min: begin says
// whether the caller starts one now (no queue: a caller that is refused just goes on).
type relearner struct {
	min     time.Duration
	now     func() time.Time
	running atomic.Bool
	mu      sync.Mutex
	last    time.Time // when the last one began
}

func (r *relearner) begin() bool {
	if !r.running.CompareAndSwap(false, true) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if !r.last.IsZero() && now.Sub(r.last) < r.min {
		r.running.Store(false)
		return false
	}
	r.last = now
	return true
}

func (r *relearner) end() { r.running.Store(false) }

// Store sends commands to a single node or to the primaries of a cluster.
type Store struct {
	open    atomic.Bool // Open ended: the mode, seeds and pools are set
	cluster bool
	seeds   []string
	auth    Auth
	timeout time.Duration
	size    int

	mu    sync.RWMutex
	owner [Slots]string // cluster: primary address per slot ("" = not covered)
	pools map[string]*Pool

	relearns relearner
	slots    func(addr string) ([Slots]string, error) // CLUSTER SLOTS of a node (tests: a fake)
	done     chan struct{}
	closing  sync.Once

	onRelearn atomic.Pointer[func(error)] // SetOnRelearn
}

func newStore(addrs []string, auth Auth, dialTimeout time.Duration, poolSize int) *Store {
	s := &Store{seeds: addrs, auth: auth, timeout: dialTimeout, size: poolSize,
		pools: map[string]*Pool{}, done: make(chan struct{}),
		relearns: relearner{min: RelearnInterval, now: time.Now}}
	s.slots = s.slotsFrom
	return s
}

// Open connects to addrs (one node, or seed nodes of a cluster) and decides the mode the
// way the Python client does (INFO cluster: cluster_enabled). The database is only
// selected on a single node. A cluster's slot map is read again every RefreshInterval
// until Close.
func Open(addrs []string, auth Auth, dialTimeout time.Duration, poolSize int) (*Store, error) {
	s := newStore(addrs, auth, dialTimeout, poolSize)
	if err := s.connect(); err != nil {
		return nil, err
	}
	return s, nil
}

// OpenLater is Open that does not fail: a store no node of addrs answers yet is returned
// not open (every Do fails ErrNotOpen) and tried again every OpenRetry until it answers or
// Close; onErr (nil: none) hears each failed try, and nil once a later try opened it. The front starts without its store this
// way: it forwards every call meanwhile instead of leaving the pod's port down.
func OpenLater(addrs []string, auth Auth, dialTimeout time.Duration, poolSize int,
	onErr func(error)) *Store {
	s := newStore(addrs, auth, dialTimeout, poolSize)
	err := s.connect()
	if err == nil {
		return s
	}
	go func() {
		t := time.NewTicker(OpenRetry)
		defer t.Stop()
		for ; err != nil; err = s.connect() {
			if onErr != nil {
				onErr(err)
			}
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
		select {
		case <-s.done: // closed while the last try ran: what it opened is closed again
			s.Close()
		default:
			if onErr != nil {
				onErr(nil)
			}
		}
	}()
	return s
}

// connect decides the mode (INFO cluster: cluster_enabled) from the first node of the seeds
// that answers, reads a cluster's slot map (again every RefreshInterval until Close), and
// marks the store open.
func (s *Store) connect() error {
	var lastErr error
	for _, a := range s.seeds {
		seed := s.auth // db 0: INFO and CLUSTER SLOTS need no SELECT
		seed.DB = 0
		c, err := Dial(a, seed, s.timeout)
		if err != nil {
			lastErr = err
			continue
		}
		rs, err := c.Do(AppendCommand(nil, []byte("INFO"), []byte("cluster")), 1, time.Now().Add(s.timeout))
		c.Close()
		if err != nil {
			lastErr = err
			continue
		}
		if e := rs[0].Err(); e != "" { // e.g. an ACL user without INFO: not "not a cluster"
			return fmt.Errorf("%s: INFO cluster: %s", a, e)
		}
		if !strings.Contains(string(rs[0].Str), "cluster_enabled:1") {
			s.mu.Lock()
			s.seeds = []string{a}
			s.pools[a] = NewPool(a, s.auth, s.timeout, s.size)
			s.mu.Unlock()
			s.open.Store(true)
			return nil
		}
		s.mu.Lock()
		s.cluster, s.auth.DB = true, 0
		s.mu.Unlock()
		if err := s.Relearn(); err != nil {
			return err
		}
		s.open.Store(true)
		go s.refresh()
		return nil
	}
	return fmt.Errorf("no store node answered: %v", lastErr)
}

// SetOnRelearn: f is told how each background relearn ended (nil: the new slot map is in
// place); safe at any time, also while OpenLater's background open runs.
func (s *Store) SetOnRelearn(f func(error)) { s.onRelearn.Store(&f) }

// Open says whether the store has answered (OpenLater: false until then).
func (s *Store) Open() bool { return s.open.Load() }

// Cluster: the store is open and a cluster.
func (s *Store) Cluster() bool { return s.open.Load() && s.cluster }

type nodeBatch struct {
	pool *Pool
	conn *Conn
	idx  []int
	buf  []byte
	err  error
}

// Do sends every command (one pipelined write per node, all nodes written before any
// reply is read) and returns the replies in command order. A redirect reply returns
// ErrRedirect; a MOVED, a connection error (cluster) or a slot no node serves also starts
// a relearn of the slot map in the background. Error replies are returned as replies. A
// deadline already passed fails at once: no pooled connection is spent on it.
func (s *Store) Do(cmds []Cmd, deadline time.Time) ([]Reply, error) {
	if !s.open.Load() {
		return nil, ErrNotOpen
	}
	if time.Until(deadline) <= 0 {
		return nil, os.ErrDeadlineExceeded
	}
	batches := map[string]*nodeBatch{}
	s.mu.RLock()
	for i, c := range cmds {
		addr := s.seeds[0]
		if s.cluster {
			addr = s.owner[c.Slot]
		}
		p := s.pools[addr]
		if addr == "" || p == nil {
			s.mu.RUnlock()
			s.maybeRelearn()
			return nil, ErrUncovered
		}
		b := batches[addr]
		if b == nil {
			b = &nodeBatch{pool: p}
			batches[addr] = b
		}
		b.idx = append(b.idx, i)
		b.buf = AppendCommand(b.buf, c.Args...)
	}
	s.mu.RUnlock()
	// the nodes' connections taken in one order: two calls never each hold one the other
	// waits for
	addrs := make([]string, 0, len(batches))
	for a := range batches {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		b := batches[a]
		if b.conn, b.err = b.pool.Get(deadline); b.err == nil {
			if b.err = b.conn.Write(b.buf, deadline); b.err != nil {
				b.pool.Discard(b.conn)
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
				b.pool.Discard(b.conn)
			}
		}
		if b.err != nil && firstErr == nil {
			firstErr = b.err
		}
	}
	if firstErr != nil {
		var busy *PoolWaitError
		if !errors.As(firstErr, &busy) {
			s.maybeRelearn() // a node gone or failed over (cluster only)
		}
		return nil, firstErr
	}
	for i := range out {
		if e := out[i].Err(); redirected(e) {
			if strings.HasPrefix(e, "MOVED ") {
				s.maybeRelearn()
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

// Close stops the periodic refresh and closes every idle connection.
func (s *Store) Close() {
	s.closing.Do(func() { close(s.done) })
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
