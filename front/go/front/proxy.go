// Package front is the Go front of persona serve: GetEmbeddings answered from the store
// on the nearline path, everything else (and every GetEmbeddings it cannot answer the way
// Python would) forwarded unchanged to the Python upstream.
package front

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"log"
	"runtime/debug"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	_ "google.golang.org/grpc/encoding/gzip" // gzip-compressed calls, as Python accepts them
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "persona/clients/go/personav1"
	"persona/front/go/metrics"
	"persona/front/go/resp"
)

// GetEmbeddingsMethod is the one method the front may answer itself.
const GetEmbeddingsMethod = "/persona.v1.UserEmbeddingService/GetEmbeddings"

const requestIDKey = "x-request-id"

// frame is a message as its wire bytes.
type frame struct{ b []byte }

// rawCodec passes frames through untouched (server side and client side).
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return v.(*frame).b, nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	v.(*frame).b = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string   { return "proto" }
func (rawCodec) String() string { return "proto" }

// Config of a Front.
type Config struct {
	Limits      Limits
	Dim         int               // served dimension; 0: learnt from upstream answers
	VersionTTL  time.Duration     // as persona serve's version_cache_s
	HeadTTL     time.Duration     // how long "version has (no) head" is believed
	ModelsDir   string            // the registry's folder: short-term heads (""; none: states.go)
	StoreBudget time.Duration     // longest store read of a local answer
	AuthToken   string            // upstream's bearer token ("" = none required)
	Margin      time.Duration     // kept back from the call's deadline (deadline_margin_s)
	Metrics     *metrics.Registry // where the front's series go (nil: a registry of its own)
	ServedLog   ServedLogConfig   // the served log of local answers (rate 0: off)
	// MaxConcurrentRPCs: calls in the front at most, as persona serve's max_concurrent_rpcs;
	// beyond, a call gets RESOURCE_EXHAUSTED (0: no limit)
	MaxConcurrentRPCs int
}

// Front is the server's behaviour.
type Front struct {
	upstream grpc.ClientConnInterface // Conns, or one *grpc.ClientConn
	store    *resp.Store
	limits   Limits
	versions *versions
	heads    *heads
	models   *modelHeads // verified heads from Config.ModelsDir (nil: none)
	dim      atomic.Int32
	budget   time.Duration
	margin   time.Duration
	auth     []byte
	m        *frontMetrics
	calls    limiter // calls in flight, at most Config.MaxConcurrentRPCs

	// authRefused: the upstream refused (UNAUTHENTICATED) a call the front would have
	// authorized (no token configured, or a token the upstream does not share): from then
	// on every GetEmbeddings is forwarded, so the upstream decides (fails closed).
	authRefused atomic.Bool
	testHook    func() // tests: run before a local answer is tried

	Local, Forwarded atomic.Int64 // GetEmbeddings answered here / sent up

	draining atomic.Bool // SIGTERM seen: health checks answer NOT_SERVING (Drain)

	served *servedLog // the served log of local answers (nil: off)
}

// New makes a Front over an upstream connection and a store.
func New(upstream grpc.ClientConnInterface, st *resp.Store, cfg Config) *Front {
	f := &Front{upstream: upstream, store: st, limits: cfg.Limits,
		versions: newVersions(st, cfg.VersionTTL),
		heads:    &heads{ttl: cfg.HeadTTL, of: map[string]headSeen{}},
		models:   newModelHeads(cfg.ModelsDir),
		budget:   cfg.StoreBudget, margin: cfg.Margin}
	f.calls.max = int64(cfg.MaxConcurrentRPCs)
	if cfg.AuthToken != "" {
		f.auth = []byte("Bearer " + cfg.AuthToken)
	}
	f.dim.Store(int32(cfg.Dim))
	reg := cfg.Metrics
	if reg == nil {
		reg = &metrics.Registry{}
	}
	f.m = newFrontMetrics(reg, f)
	f.served = startServedLog(cfg.ServedLog, f.m.served)
	if st != nil {
		st.SetOnRelearn(f.m.relearnt)
	}
	return f
}

// MaxMessageBytes is the Python server's limit both ways (services/serving/server.py
// MAX_MESSAGE_BYTES); grpc-go's default receive limit is 4 MiB.
const MaxMessageBytes = 16 << 20

// ServerOptions route every call to the front's handler as raw bytes, messages up to
// MaxMessageBytes as the upstream takes them.
func (f *Front) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.CustomCodec(rawCodec{}), grpc.UnknownServiceHandler(f.handle),
		grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxMessageBytes)}
}

// UpstreamBackoff: reconnection to a restarted upstream is tried at least once a second
// (grpc-go's default backs off up to 120 s).
var UpstreamBackoff = backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6,
	Jitter: 0.2, MaxDelay: time.Second}

// DialOptions for the upstream connection: TLS with creds (nil: plaintext), the same
// message limits, reconnection backoff of at most UpstreamBackoff.MaxDelay.
func DialOptions(creds credentials.TransportCredentials) []grpc.DialOption {
	security := grpc.WithInsecure()
	if creds != nil {
		security = grpc.WithTransportCredentials(creds)
	}
	return []grpc.DialOption{security, grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: UpstreamBackoff,
			MinConnectTimeout: 5 * time.Second})}
}

func (f *Front) handle(_ interface{}, ss grpc.ServerStream) (err error) {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "no method")
	}
	if method == healthCheck && f.draining.Load() {
		return drainingHealth(ss)
	}
	// health checks pass the limit: a full front must not read as down to its probes (a
	// Watch stream holds a place as any call does)
	if method != healthCheck {
		if !f.calls.acquire() { // as grpcio refuses it: before the request is read
			f.m.rejectedConcurrency.Inc()
			return errConcurrency
		}
		defer f.calls.release() // before the status goes out: the caller may call at once
	}
	defer func() {
		if p := recover(); p != nil { // a bug in the front: the call fails, the front serves on
			log.Printf("persona-front: panic in %s: %v\n%s", method, p, debug.Stack())
			err = status.Error(codes.Internal, "internal error in persona-front")
		}
	}()
	if method == GetEmbeddingsMethod {
		return f.getEmbeddings(ss)
	}
	err = f.forwardStream(method, ss)
	f.upstreamSaid(ss.Context(), err)
	f.m.forwardedCall(method, status.Code(err))
	return err
}

// upstreamSaid notes an UNAUTHENTICATED the upstream gave a call the front would have
// authorized: the front then forwards every GetEmbeddings (logged once).
func (f *Front) upstreamSaid(ctx context.Context, err error) {
	if status.Code(err) != codes.Unauthenticated || !f.authorized(ctx) || f.authRefused.Load() {
		return
	}
	if f.authRefused.CompareAndSwap(false, true) {
		log.Printf("persona-front: the upstream refused a call the front would have authorized" +
			" (UNAUTHENTICATED): it requires a bearer token the front does not check" +
			" (PERSONA_AUTH_TOKEN / -auth-token-file); every GetEmbeddings is forwarded from now on")
	}
}

func (f *Front) authorized(ctx context.Context) bool {
	if f.auth == nil {
		return true
	}
	md, _ := metadata.FromIncomingContext(ctx)
	got := md.Get("authorization")
	return len(got) > 0 && subtle.ConstantTimeCompare([]byte(got[0]), f.auth) == 1
}

func (f *Front) getEmbeddings(ss grpc.ServerStream) error {
	ctx := ss.Context()
	in := &frame{}
	if err := ss.RecvMsg(in); err != nil {
		return err
	}
	req, why, done, err := f.tryLocal(ss, in)
	if done {
		return err
	}
	f.Forwarded.Add(1)
	f.m.forwardedFor(f.m.forwardReason(why))
	err = f.forwardUnary(ctx, in, req, ss)
	f.upstreamSaid(ctx, err)
	f.m.forwardedCall(GetEmbeddingsMethod, status.Code(err))
	return err
}

// tryLocal answers a GetEmbeddings from the store when it can (done: the answer, or the
// error sending it, is err), else says why not and gives the parsed request (nil when it
// must not be learnt from). A panic before anything was sent forwards the call (reason
// other); after, the call fails INTERNAL.
func (f *Front) tryLocal(ss grpc.ServerStream, in *frame) (
	req *pb.GetEmbeddingsRequest, why error, done bool, err error) {
	ctx := ss.Context()
	t0 := time.Now()
	sent := false
	defer func() {
		if p := recover(); p != nil {
			log.Printf("persona-front: panic answering GetEmbeddings: %v\n%s", p, debug.Stack())
			if sent {
				req, why, done = nil, nil, true
				err = status.Error(codes.Internal, "internal error in persona-front")
				return
			}
			req, why, done, err = nil, errOther, false, nil
		}
	}()
	if f.testHook != nil {
		f.testHook()
	}
	req = &pb.GetEmbeddingsRequest{}
	why = errInvalid
	if len(in.b) > f.limits.bodyLimit() { // forwarded unparsed: Python refuses it by its size
		return nil, why, false, nil
	}
	if proto.Unmarshal(in.b, req) != nil {
		return nil, why, false, nil
	}
	if !f.authorized(ctx) || f.authRefused.Load() {
		return nil, errAuth, false, nil
	}
	// Python's Budget.make: the store timeout, or what the deadline leaves less the margin
	deadline := t0.Add(f.budget)
	if d, ok := ctx.Deadline(); ok && d.Add(-f.margin).Before(deadline) {
		deadline = d.Add(-f.margin)
	}
	var out *pb.GetEmbeddingsResponse
	if out, why = f.answer(req, deadline); why == errInvalid {
		return nil, why, false, nil // Python refuses it: not kept alive through the forward
	}
	if why != nil {
		return req, why, false, nil
	}
	b, merr := proto.Marshal(out)
	if merr != nil {
		return req, errOther, false, nil
	}
	f.Local.Add(1)
	sent = true
	rid := requestID(ctx)
	_ = ss.SendHeader(metadata.Pairs(requestIDKey, rid))
	err = ss.SendMsg(&frame{b})
	f.m.localAnswer(out, time.Since(t0))
	f.served.offer(req.UserIds, out, rid) // as Python: whether or not the answer got out
	return req, nil, true, err
}

// requestID is the caller's x-request-id (at most 64 characters) or a new one, as the
// Python RequestIdInterceptor gives.
func requestID(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if got := md.Get(requestIDKey); len(got) > 0 && got[0] != "" {
		r := []rune(got[0])
		if len(r) > 64 {
			r = r[:64]
		}
		return string(r)
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

const (
	healthPrefix = "/grpc.health.v1.Health/"
	healthCheck  = healthPrefix + "Check"
)

// Drain: from now on grpc.health.v1 Check answers NOT_SERVING here instead of asking the
// upstream, so that the pod leaves the endpoints even when only the front stops (a liveness
// restart of the front alone: persona serve still says SERVING); every other call is
// answered or forwarded as before, until the server stops.
func (f *Front) Drain() { f.draining.Store(true) }

// drainingHealth answers a health Check NOT_SERVING (HealthCheckResponse{status: 2}, as
// bytes: the request, whatever service it names, is read and dropped).
func drainingHealth(ss grpc.ServerStream) error {
	var in frame
	if err := ss.RecvMsg(&in); err != nil {
		return err
	}
	return ss.SendMsg(&frame{b: []byte{0x08, 0x02}})
}
