package front

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "persona/clients/go/personav1"
)

// serveRaw serves every method with handler (raw bytes) on a loopback port.
func serveRaw(t *testing.T, handler grpc.StreamHandler, opts ...grpc.ServerOption) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(opts, grpc.CustomCodec(rawCodec{}),
		grpc.UnknownServiceHandler(handler))...)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// upstreamAnswering: a fake persona serve that answers every call with answer (its error
// when not nil, else the bytes "up").
func upstreamAnswering(t *testing.T, answer error) *grpc.ClientConn {
	addr := serveRaw(t, func(_ interface{}, ss grpc.ServerStream) error {
		in := &frame{}
		if err := ss.RecvMsg(in); err != nil {
			return err
		}
		if answer != nil {
			return answer
		}
		return ss.SendMsg(&frame{[]byte("up")})
	})
	conn, err := grpc.Dial(addr, DialOptions(nil)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// frontOver starts f on a loopback port: a client connection to it.
func frontOver(t *testing.T, f *Front) *grpc.ClientConn {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(f.ServerOptions()...)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.Dial(lis.Addr().String(), grpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func call(conn *grpc.ClientConn, method string, md ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	b, _ := proto.Marshal(&pb.GetEmbeddingsRequest{UserIds: []string{"u1"}})
	out := &frame{}
	err := conn.Invoke(ctx, method, &frame{b}, out, grpc.ForceCodec(rawCodec{}))
	return out.b, err
}

// A panic while answering, before anything was sent, forwards the call (reason other).
func TestPanicForwards(t *testing.T) {
	f := New(upstreamAnswering(t, nil), nil, Config{Dim: 4})
	f.testHook = func() { panic("boom") }
	got, err := call(frontOver(t, f), GetEmbeddingsMethod)
	if err != nil || string(got) != "up" {
		t.Fatalf("%q %v", got, err)
	}
	if f.m.reasons["other"].Value() != 1 || f.Forwarded.Load() != 1 {
		t.Fatal("not counted as forwarded for other")
	}
	// the front serves on
	f.testHook = nil
	f.dim.Store(0)
	if got, err := call(frontOver(t, f), GetEmbeddingsMethod); err != nil || string(got) != "up" {
		t.Fatalf("%q %v", got, err)
	}
}

// An UNAUTHENTICATED from the upstream for a call the front would have let through makes
// every later GetEmbeddings go up (fails closed); one for a caller the front refuses too
// does not.
func TestUpstreamAuthFailsClosed(t *testing.T) {
	refused := status.Error(codes.Unauthenticated, "missing or invalid bearer token")
	f := New(upstreamAnswering(t, refused), nil, Config{})
	conn := frontOver(t, f)
	if f.authRefused.Load() {
		t.Fatal("refused from the start")
	}
	if _, err := call(conn, "/persona.v1.UserEmbeddingService/GetModelInfo"); status.Code(err) != codes.Unauthenticated {
		t.Fatal(err)
	}
	if !f.authRefused.Load() {
		t.Fatal("an upstream refusal not noted")
	}
	if _, err := call(conn, GetEmbeddingsMethod); status.Code(err) != codes.Unauthenticated {
		t.Fatal(err)
	}
	if f.m.reasons["auth"].Value() != 1 {
		t.Fatal("not forwarded for auth")
	}

	g := New(upstreamAnswering(t, refused), nil, Config{AuthToken: "tok"})
	gc := frontOver(t, g)
	if _, err := call(gc, GetEmbeddingsMethod, "authorization", "Bearer wrong"); status.Code(err) != codes.Unauthenticated {
		t.Fatal(err)
	}
	if g.authRefused.Load() {
		t.Fatal("a caller the front refuses too set it")
	}
	// the upstream refuses the front's own token: it does not share it
	if _, err := call(gc, "/persona.v1.UserEmbeddingService/GetModelInfo", "authorization", "Bearer tok"); status.Code(err) != codes.Unauthenticated {
		t.Fatal(err)
	}
	if !g.authRefused.Load() {
		t.Fatal("a token mismatch not noted")
	}
}

// Reconnection to a restarted upstream is tried at least once a second.
func TestUpstreamBackoff(t *testing.T) {
	if UpstreamBackoff.MaxDelay > time.Second || UpstreamBackoff.BaseDelay <= 0 {
		t.Fatal(UpstreamBackoff)
	}
}

func TestAnswerHeadReadsWhatUnmarshalReads(t *testing.T) {
	full := &pb.GetEmbeddingsResponse{
		ModelVersion: "v1-x", Dim: 64, Part: pb.VectorPart_VECTOR_PART_COMBINED,
		Vectors:  make([]byte, 4*64*3),
		Statuses: []pb.EmbeddingStatus{pb.EmbeddingStatus_EMBEDDING_STATUS_FOUND},
		Meta:     &pb.VectorMetaColumns{ComputedAtMs: []int64{1, 2}, AgeSeconds: []float64{0.5}},
	}
	raw, err := proto.Marshal(full)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := answerHead(raw)
	if !ok || got.ModelVersion != "v1-x" || got.Dim != 64 || got.Part != full.Part {
		t.Fatalf("%+v %v", got, ok)
	}
	if _, ok := answerHead(raw[:len(raw)-1]); ok {
		t.Fatal("a cut answer parsed")
	}
	if got, ok := answerHead(nil); !ok || got.Dim != 0 {
		t.Fatal("an empty answer")
	}
}

// ctxStream is a server stream with only a context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

// A request refused as invalid is forwarded without its parsed form: it is not kept alive
// through the forward, nor learnt from.
func TestInvalidRequestNotKeptForTheForward(t *testing.T) {
	f := New(nil, nil, Config{Dim: 4, Limits: Limits{MaxBatch: 1, MaxHistory: 3, MaxIDBytes: 256}})
	b, _ := proto.Marshal(&pb.GetEmbeddingsRequest{UserIds: []string{"u1", "u2"}})
	req, why, done, err := f.tryLocal(ctxStream{ctx: context.Background()}, &frame{b})
	if done || err != nil || why != errInvalid || req != nil {
		t.Fatalf("req %v why %v done %v err %v", req, why, done, err)
	}
}

// A GetEmbeddings body past Python's receive limit is forwarded unparsed: 16 MiB of
// one-byte ids took 504 MiB to parse before any check ran.
func TestOversizedBodyForwardedUnparsed(t *testing.T) {
	lim := Limits{MaxBatch: 1000, MaxHistory: 3, MaxIDBytes: 256}
	if got := lim.bodyLimit(); got != 1<<20 {
		t.Fatalf("body limit %d, want 1 MiB (Python's receive_limit at its defaults)", got)
	}
	f := New(nil, nil, Config{Dim: 4, Limits: lim})
	ids := make([]string, 400_000)
	for i := range ids {
		ids[i] = "u"
	}
	b, _ := proto.Marshal(&pb.GetEmbeddingsRequest{UserIds: ids})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	req, why, done, err := f.tryLocal(ctxStream{ctx: context.Background()}, &frame{b})
	runtime.ReadMemStats(&after)
	if done || err != nil || why != errInvalid || req != nil {
		t.Fatalf("req %v why %v done %v err %v", req != nil, why, done, err)
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 1<<20 {
		t.Fatalf("%d bytes allocated for a body of %d refused unparsed", grown, len(b))
	}
}
