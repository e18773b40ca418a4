package resp

import (
	"fmt"
	"net"
	"sort"
	"strconv"
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

func (s *Store) refresh() {
	t := time.NewTicker(RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.maybeRelearn()
		}
	}
}

// maybeRelearn starts a relearn in the background unless one runs or one began less than
// RelearnInterval ago (cluster only).
func (s *Store) maybeRelearn() {
	if !s.cluster || !s.relearns.begin() {
		return
	}
	go func() {
		err := s.Relearn()
		s.relearns.end()
		if f := s.onRelearn.Load(); f != nil && *f != nil {
			(*f)(err)
		}
	}()
}

// Relearn reads CLUSTER SLOTS from a known node (the nodes of the current map first, then
// the seeds), replaces the slot map, and closes the pools of nodes no longer in it.
func (s *Store) Relearn() error {
	s.mu.RLock()
	tried := make([]string, 0, len(s.pools)+len(s.seeds))
	for a := range s.pools {
		tried = append(tried, a)
	}
	s.mu.RUnlock()
	sort.Strings(tried)
	for _, a := range s.seeds {
		if !contains(tried, a) {
			tried = append(tried, a)
		}
	}
	var lastErr error
	for _, a := range tried {
		owner, err := s.slots(a)
		if err != nil {
			lastErr = err
			continue
		}
		s.install(owner)
		return nil
	}
	return fmt.Errorf("CLUSTER SLOTS: %v", lastErr)
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// install puts a new slot map in place: pools for its new nodes, the pools of nodes it
// no longer names closed and dropped.
func (s *Store) install(owner [Slots]string) {
	live := map[string]bool{}
	for _, o := range owner {
		if o != "" {
			live[o] = true
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.owner = owner
	for o := range live {
		if s.pools[o] == nil {
			s.pools[o] = NewPool(o, s.auth, s.timeout, s.size)
		}
	}
	for a, p := range s.pools {
		if !live[a] {
			p.Close()
			delete(s.pools, a)
		}
	}
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
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return owner, err
	}
	for _, r := range rs[0].Array {
		if len(r.Array) < 3 || len(r.Array[2].Array) < 2 {
			return owner, ErrProtocol
		}
		lo, hi, node := r.Array[0].Int, r.Array[1].Int, r.Array[2].Array
		if lo < 0 || hi >= Slots || lo > hi { // not a range of slots: refused, not indexed
			return owner, ErrProtocol
		}
		h := string(node[0].Str)
		if h == "" || h == "?" {
			h = host
		}
		a := net.JoinHostPort(h, strconv.FormatInt(node[1].Int, 10))
		for sl := lo; sl <= hi; sl++ {
			owner[sl] = a
		}
	}
	return owner, nil
}
