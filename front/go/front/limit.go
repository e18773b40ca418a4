package front

import (
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errConcurrency is what a call beyond the limit gets: grpcio's own refusal
// (grpc/_server.py, maximum_concurrent_rpcs), code and message.
var errConcurrency = status.Error(codes.ResourceExhausted, "Concurrent RPC limit exceeded!")

// limiter is persona serve's maximum_concurrent_rpcs: a call that finds max calls already
// in the server (answered here or forwarded, unary or streaming) is refused before its
// request is read; max <= 0 is no limit. It counts the calls in flight either way.
type limiter struct {
	max int64
	n   atomic.Int64
}

// acquire takes a place for a call; false: the server is full (nothing taken).
func (l *limiter) acquire() bool {
	if l.max <= 0 {
		l.n.Add(1)
		return true
	}
	for {
		n := l.n.Load()
		if n >= l.max {
			return false
		}
		if l.n.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release gives back the place of a call that acquired one.
func (l *limiter) release() { l.n.Add(-1) }

// inFlight: the calls holding a place now.
func (l *limiter) inFlight() int64 { return l.n.Load() }
