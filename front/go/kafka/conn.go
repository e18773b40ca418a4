package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"
)

// maxResponse: the largest response read (librdkafka's receive.message.max.bytes is 100 MB;
// the producer's answers are small).
const maxResponse = 64 << 20

// connError: the connection failed; sent says whether the request was written whole (then
// the broker may have acted on it: not retried, not to duplicate records).
type connError struct {
	addr string
	sent bool
	err  error
}

func (e *connError) Error() string { return fmt.Sprintf("kafka %s: %v", e.addr, e.err) }
func (e *connError) Unwrap() error { return e.err }

// conn is one broker connection: one request in flight at a time (its caller's).
type conn struct {
	addr     string
	clientID string
	nc       net.Conn
	corr     int32
	versions map[int16][2]int16 // api key -> the broker's min, max
	used     atomic.Int64       // unix ns of the last answer read (alive then)
}

// dial connects to addr within dialTimeout (or ctx's deadline, if sooner) and asks the
// broker which versions it speaks.
func dial(ctx context.Context, addr, clientID string, dialTimeout time.Duration) (*conn, error) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	nc, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, &connError{addr: addr, err: err}
	}
	c := &conn{addr: addr, clientID: clientID, nc: nc}
	resp, err := c.roundTrip(dctx, apiApiVersions, 0, nil)
	if err != nil {
		c.close()
		return nil, err
	}
	d := &dec{b: resp}
	code := d.i16()
	n := d.array(6)
	c.versions = make(map[int16][2]int16, n)
	for i := 0; i < n; i++ {
		key, lo, hi := d.i16(), d.i16(), d.i16()
		c.versions[key] = [2]int16{lo, hi}
	}
	if d.err == nil && code != errNone {
		d.err = Error(code)
	}
	if d.err != nil {
		c.close()
		return nil, fmt.Errorf("kafka %s: ApiVersions: %w", addr, d.err)
	}
	return c, nil
}

// version: the highest version of api both the broker and this package speak.
func (c *conn) version(api int16) (int16, error) {
	b, ok := c.versions[api]
	mine := speaks[api]
	lo, hi := mine[0], mine[1]
	if b[0] > lo {
		lo = b[0]
	}
	if b[1] < hi {
		hi = b[1]
	}
	if !ok || lo > hi {
		return 0, fmt.Errorf("kafka %s: the broker speaks api %d v%d..v%d, the front v%d..v%d",
			c.addr, api, b[0], b[1], mine[0], mine[1])
	}
	return hi, nil
}

func (c *conn) close() { _ = c.nc.Close() }

// idle: how long since the connection last carried an answer.
func (c *conn) idle() time.Duration { return time.Since(time.Unix(0, c.used.Load())) }

// alive says whether the broker still holds the connection, before a request is written
// on one that has been idle: a broker closes idle connections (connections.max.idle.ms,
// 10 min by default), a restarted broker or a NAT drops them, and a request written on a
// half-closed socket is "maybe written" (not sent again: its records would count failed
// though the broker never read them). A broker never sends unasked, so a read that finds
// no data within a millisecond means alive; EOF, a reset or unasked bytes mean not.
func (c *conn) alive() bool {
	_ = c.nc.SetReadDeadline(time.Now().Add(time.Millisecond))
	var one [1]byte
	n, err := c.nc.Read(one[:])
	_ = c.nc.SetReadDeadline(time.Time{})
	var ne net.Error
	return n == 0 && errors.As(err, &ne) && ne.Timeout()
}

// roundTrip sends one request (header v1: api key, version, correlation id, client id) and
// reads its response (header v0), within ctx's deadline; cancelling ctx cuts the I/O. On
// any error the connection is closed (a connError), and must not be used again.
func (c *conn) roundTrip(ctx context.Context, api, version int16, body []byte) ([]byte, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.nc.SetDeadline(dl)
	} else {
		_ = c.nc.SetDeadline(time.Time{})
	}
	stop, exited := make(chan struct{}), make(chan struct{})
	defer func() { close(stop); <-exited }() // no late SetDeadline on the next request
	go func() {
		defer close(exited)
		select {
		case <-ctx.Done():
			_ = c.nc.SetDeadline(time.Unix(1, 0)) // now: pending reads and writes fail
		case <-stop:
		}
	}()
	c.corr++
	e := &enc{b: make([]byte, 4, 4+10+len(c.clientID)+len(body))}
	e.i16(api)
	e.i16(version)
	e.i32(c.corr)
	e.str(c.clientID)
	e.b = append(e.b, body...)
	binary.BigEndian.PutUint32(e.b, uint32(len(e.b)-4))
	fail := func(sent bool, err error) ([]byte, error) {
		c.close()
		if ctx.Err() != nil {
			err = fmt.Errorf("%v (%v)", ctx.Err(), err)
		}
		return nil, &connError{addr: c.addr, sent: sent, err: err}
	}
	if _, err := c.nc.Write(e.b); err != nil {
		return fail(false, err)
	}
	var size [4]byte
	if _, err := io.ReadFull(c.nc, size[:]); err != nil {
		return fail(true, err)
	}
	n := binary.BigEndian.Uint32(size[:])
	if n < 4 || n > maxResponse {
		return fail(true, fmt.Errorf("response of %d bytes", n))
	}
	resp := make([]byte, n)
	if _, err := io.ReadFull(c.nc, resp); err != nil {
		return fail(true, err)
	}
	if got := int32(binary.BigEndian.Uint32(resp)); got != c.corr {
		return fail(true, fmt.Errorf("correlation id %d, want %d", got, c.corr))
	}
	c.used.Store(time.Now().UnixNano())
	return resp[4:], nil
}
