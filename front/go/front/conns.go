package front

import (
	"context"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
)

// Conns sends calls over several upstream connections in turn. `persona serve --processes
// N` shares one port among N processes (SO_REUSEPORT) and the kernel hands each
// connection, not each call, to one of them: over a single connection every forwarded call
// would reach one process. With a few connections per process the calls spread over all of
// them (which process a connection reaches is the kernel's hash of its addresses).
type Conns struct {
	cs   []*grpc.ClientConn
	next atomic.Uint64
}

// NewConns over at least one connection.
func NewConns(cs []*grpc.ClientConn) *Conns {
	if len(cs) == 0 {
		panic("front.NewConns: no connection")
	}
	return &Conns{cs: cs}
}

// pick: the next connection in turn, passing over those in TRANSIENT_FAILURE (reconnecting
// after persona serve restarted) while another may answer: a call sent on one would fail
// UNAVAILABLE at once. When every one is failing, the next in turn.
func (c *Conns) pick() *grpc.ClientConn {
	n := uint64(len(c.cs))
	first := c.next.Add(1) - 1
	for i := uint64(0); i < n; i++ {
		cc := c.cs[(first+i)%n]
		if cc.GetState() != connectivity.TransientFailure {
			return cc
		}
	}
	return c.cs[first%n]
}

// Invoke is grpc.ClientConnInterface's, on the next connection.
func (c *Conns) Invoke(ctx context.Context, method string, args, reply interface{},
	opts ...grpc.CallOption) error {
	return c.pick().Invoke(ctx, method, args, reply, opts...)
}

// NewStream is grpc.ClientConnInterface's, on the next connection.
func (c *Conns) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string,
	opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return c.pick().NewStream(ctx, desc, method, opts...)
}

// Close closes every connection.
func (c *Conns) Close() {
	for _, cc := range c.cs {
		cc.Close()
	}
}
