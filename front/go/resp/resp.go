// Package resp is a small RESP2 client for the front's store reads: commands appended to
// one buffer per node and written in one write, replies read in order from a buffered
// reader. Connections are pooled per node; a connection that saw any error is closed.
package resp

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// Reply is one RESP2 reply. Kind: '+' simple string, '-' error, ':' integer, '$' bulk
// string, '*' array. Nil is set for a null bulk string or null array.
type Reply struct {
	Kind  byte
	Str   []byte
	Int   int64
	Array []Reply
	Nil   bool
}

// Err is the error reply's message, or "".
func (r *Reply) Err() string {
	if r.Kind == '-' {
		return string(r.Str)
	}
	return ""
}

// AppendCommand appends args as a RESP array of bulk strings.
func AppendCommand(buf []byte, args ...[]byte) []byte {
	buf = append(buf, '*')
	buf = strconv.AppendInt(buf, int64(len(args)), 10)
	buf = append(buf, '\r', '\n')
	for _, a := range args {
		buf = append(buf, '$')
		buf = strconv.AppendInt(buf, int64(len(a)), 10)
		buf = append(buf, '\r', '\n')
		buf = append(buf, a...)
		buf = append(buf, '\r', '\n')
	}
	return buf
}

// ErrProtocol is returned for bytes that are not RESP2.
var ErrProtocol = errors.New("resp: protocol error")

const maxBulk = 512 << 20

// A reply's header is not its data: arrays start at most arrayStep long and strings over
// bulkStep grow as their bytes arrive, so a header alone allocates little; arrays nest at
// most maxDepth deep (CLUSTER SLOTS: 4).
const (
	arrayStep = 1024
	bulkStep  = 1 << 20
	maxDepth  = 8
)

// ReadReply reads one reply.
func ReadReply(r *bufio.Reader) (Reply, error) { return readReply(r, 0) }

// readReply reads one reply inside depth arrays.
func readReply(r *bufio.Reader, depth int) (Reply, error) {
	line, err := readLine(r)
	if err != nil {
		return Reply{}, err
	}
	if len(line) == 0 {
		return Reply{}, ErrProtocol
	}
	kind, rest := line[0], line[1:]
	switch kind {
	case '+', '-':
		return Reply{Kind: kind, Str: append([]byte(nil), rest...)}, nil
	case ':':
		n, err := strconv.ParseInt(string(rest), 10, 64)
		if err != nil {
			return Reply{}, ErrProtocol
		}
		return Reply{Kind: kind, Int: n}, nil
	case '$':
		n, err := strconv.ParseInt(string(rest), 10, 64)
		if err != nil || n < -1 || n > maxBulk {
			return Reply{}, ErrProtocol
		}
		if n == -1 {
			return Reply{Kind: kind, Nil: true}, nil
		}
		buf, err := readBulk(r, int(n)+2)
		if err != nil {
			return Reply{}, err
		}
		if buf[n] != '\r' || buf[n+1] != '\n' {
			return Reply{}, ErrProtocol
		}
		return Reply{Kind: kind, Str: buf[:n:n]}, nil
	case '*':
		n, err := strconv.ParseInt(string(rest), 10, 64)
		if err != nil || n < -1 || n > 1<<24 || depth == maxDepth {
			return Reply{}, ErrProtocol
		}
		if n == -1 {
			return Reply{Kind: kind, Nil: true}, nil
		}
		arr := make([]Reply, 0, minInt(int(n), arrayStep))
		for i := int64(0); i < n; i++ {
			e, err := readReply(r, depth+1)
			if err != nil {
				return Reply{}, err
			}
			arr = append(arr, e)
		}
		return Reply{Kind: kind, Array: arr}, nil
	}
	return Reply{}, ErrProtocol
}

// readBulk reads n bytes into a buffer at most bulkStep long at first, grown (at most
// doubled) only as bytes arrive.
func readBulk(r *bufio.Reader, n int) ([]byte, error) {
	buf := make([]byte, minInt(n, bulkStep))
	for got := 0; ; {
		k, err := io.ReadFull(r, buf[got:])
		if got += k; err != nil {
			return nil, err
		}
		if got == n {
			return buf, nil
		}
		buf = append(buf, make([]byte, minInt(n-got, got))...)
	}
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, ErrProtocol
	}
	if err != nil {
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, ErrProtocol
	}
	return line[:len(line)-2], nil
}

// Conn is one connection to a node.
type Conn struct {
	net  net.Conn
	r    *bufio.Reader
	Addr string
}

// Auth is what a new connection sends before use: AUTH when Password is set, SELECT when
// DB is not 0.
type Auth struct {
	Username, Password string
	DB                 int
	// TLS: connections are TLS with this config (rediss://), the server name set from the
	// node's host when empty; nil: plain TCP
	TLS *tls.Config
}

// Dial connects to addr and authenticates / selects the database within timeout.
func Dial(addr string, auth Auth, timeout time.Duration) (*Conn, error) {
	return DialBy(addr, auth, time.Now().Add(timeout))
}

// DialBy connects to addr and authenticates / selects the database, all of it before
// deadline.
func DialBy(addr string, auth Auth, deadline time.Time) (*Conn, error) {
	d := net.Dialer{Deadline: deadline}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if auth.TLS != nil {
		if nc, err = handshake(nc, addr, auth.TLS, deadline); err != nil {
			return nil, err
		}
	}
	c := &Conn{net: nc, r: bufio.NewReaderSize(nc, 64<<10), Addr: addr}
	var hello [][][]byte
	if auth.Password != "" {
		if auth.Username != "" {
			hello = append(hello, [][]byte{[]byte("AUTH"), []byte(auth.Username), []byte(auth.Password)})
		} else {
			hello = append(hello, [][]byte{[]byte("AUTH"), []byte(auth.Password)})
		}
	}
	if auth.DB != 0 {
		hello = append(hello, [][]byte{[]byte("SELECT"), []byte(strconv.Itoa(auth.DB))})
	}
	if len(hello) > 0 {
		var buf []byte
		for _, h := range hello {
			buf = AppendCommand(buf, h...)
		}
		replies, err := c.Do(buf, len(hello), deadline)
		if err == nil {
			for _, r := range replies {
				if e := r.Err(); e != "" {
					err = fmt.Errorf("%s: %s", addr, e)
				}
			}
		}
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Write writes packed commands (one write) with the deadline set.
func (c *Conn) Write(buf []byte, deadline time.Time) error {
	if err := c.net.SetDeadline(deadline); err != nil {
		return err
	}
	_, err := c.net.Write(buf)
	return err
}

// Read reads n replies in order.
func (c *Conn) Read(n int) ([]Reply, error) {
	out := make([]Reply, n)
	for i := range out {
		var err error
		if out[i], err = ReadReply(c.r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Do writes packed commands and reads their n replies.
func (c *Conn) Do(buf []byte, n int, deadline time.Time) ([]Reply, error) {
	if err := c.Write(buf, deadline); err != nil {
		return nil, err
	}
	return c.Read(n)
}

// Close closes the connection.
func (c *Conn) Close() { _ = c.net.Close() }

// PoolWaitError: every connection a pool may open to its node was in use until the
// call's deadline (a timeout: errors.Is(err, os.ErrDeadlineExceeded)).
type PoolWaitError struct{ Addr string }

func (e *PoolWaitError) Error() string {
	return "resp: " + e.Addr + ": no free connection before the deadline"
}

// Is makes the error a deadline exceeded.
func (e *PoolWaitError) Is(t error) bool { return t == os.ErrDeadlineExceeded }

// Timeout is true (net.Error's).
func (e *PoolWaitError) Timeout() bool { return true }

// Pool keeps idle connections to one node (LIFO up to its capacity) and caps the
// connections open to it, idle and in use together, at its size: a burst of calls waits
// for a free connection (up to each call's deadline) instead of opening thousands.
type Pool struct {
	addr    string
	auth    Auth
	timeout time.Duration
	idle    chan *Conn
	sem     chan struct{} // one token per open connection
	closed  atomic.Bool
}

// NewPool makes a pool of at most size connections to addr.
func NewPool(addr string, auth Auth, dialTimeout time.Duration, size int) *Pool {
	if size < 1 {
		size = 1
	}
	return &Pool{addr: addr, auth: auth, timeout: dialTimeout, idle: make(chan *Conn, size),
		sem: make(chan struct{}, size)}
}

// Get returns an idle connection, else dials a new one when fewer than size are open,
// else waits for either until deadline (an error wrapping os.ErrDeadlineExceeded). A new
// connection is dialled, authenticated and its database selected before the earlier of
// deadline and now + the dial timeout.
func (p *Pool) Get(deadline time.Time) (*Conn, error) {
	select {
	case c := <-p.idle:
		return c, nil
	default:
	}
	if p.closed.Load() {
		return nil, fmt.Errorf("resp: %s: pool closed", p.addr)
	}
	select {
	case c := <-p.idle:
		return c, nil
	case p.sem <- struct{}{}:
	default:
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, &PoolWaitError{p.addr}
		}
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case c := <-p.idle:
			return c, nil
		case p.sem <- struct{}{}:
		case <-t.C:
			return nil, &PoolWaitError{p.addr}
		}
	}
	d := time.Now().Add(p.timeout)
	if !deadline.IsZero() && deadline.Before(d) {
		d = deadline
	}
	c, err := DialBy(p.addr, p.auth, d)
	if err != nil {
		<-p.sem
		return nil, err
	}
	return c, nil
}

// Put keeps a healthy connection of Get's (or closes it when the pool is closed or full).
func (p *Pool) Put(c *Conn) {
	if !p.closed.Load() {
		select {
		case p.idle <- c:
			return
		default:
		}
	}
	p.Discard(c)
}

// Discard closes a connection of Get's (one that saw an error) and frees its place.
func (p *Pool) Discard(c *Conn) {
	c.Close()
	select {
	case <-p.sem:
	default:
	}
}

// Open is the number of connections open to the node (idle and in use).
func (p *Pool) Open() int { return len(p.sem) }

// Close closes the idle connections; connections in use are closed when put back.
func (p *Pool) Close() {
	p.closed.Store(true)
	for {
		select {
		case c := <-p.idle:
			p.Discard(c)
		default:
			return
		}
	}
}

// handshake runs the TLS handshake on nc before deadline, verifying the node's certificate
// for its host (redis-py's rediss:// defaults: ssl_cert_reqs required, ssl_check_hostname
// true, the system's CAs, which SSL_CERT_FILE / SSL_CERT_DIR extend for both).
func handshake(nc net.Conn, addr string, cfg *tls.Config, deadline time.Time) (net.Conn, error) {
	c := cfg.Clone()
	if c.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			nc.Close()
			return nil, err
		}
		c.ServerName = host
	}
	tc := tls.Client(nc, c)
	_ = tc.SetDeadline(deadline)
	if err := tc.Handshake(); err != nil {
		tc.Close()
		return nil, fmt.Errorf("%s: TLS: %w", addr, err)
	}
	_ = tc.SetDeadline(time.Time{})
	return tc, nil
}
