package front

import (
	"context"
	"io"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"

	pb "persona/clients/go/personav1"
)

// outgoing is the caller's metadata for the upstream call (deadline and cancellation come
// with ctx).
func outgoing(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	md = md.Copy()
	delete(md, ":authority")
	delete(md, "user-agent")
	return metadata.NewOutgoingContext(ctx, md)
}

// forwardUnary sends a GetEmbeddings up as it came (learning from the answer when req, its
// parsed form, is not nil) and returns the upstream's answer, headers, trailers and status.
func (f *Front) forwardUnary(ctx context.Context, in *frame, req *pb.GetEmbeddingsRequest,
	ss grpc.ServerStream) error {
	var header, trailer metadata.MD
	out := &frame{}
	err := f.upstream.Invoke(outgoing(ctx), GetEmbeddingsMethod, in, out, grpc.Header(&header),
		grpc.Trailer(&trailer), grpc.ForceCodec(rawCodec{}))
	if len(header) > 0 {
		_ = ss.SendHeader(header)
	}
	ss.SetTrailer(trailer)
	if err != nil {
		return err
	}
	if req != nil {
		f.learn(req, out.b)
	}
	return ss.SendMsg(out)
}

// head of a GetEmbeddingsResponse: the fields learn reads.
type head struct {
	ModelVersion string
	Dim          int32
	Part         pb.VectorPart
}

// answerHead is what learn reads of a forwarded GetEmbeddingsResponse: model_version (1),
// dim (2) and part (13), scanned off the wire without decoding the vectors and columns
// (an answer can be megabytes); ok false for bytes that do not parse.
func answerHead(raw []byte) (got head, ok bool) {
	for len(raw) > 0 {
		num, typ, n := protowire.ConsumeTag(raw)
		if n < 0 {
			return got, false
		}
		raw = raw[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(raw)
			if m < 0 || !utf8.Valid(v) {
				return got, false
			}
			got.ModelVersion, n = string(v), m
		case (num == 2 || num == 13) && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(raw)
			if m < 0 {
				return got, false
			}
			if num == 2 {
				got.Dim = int32(v)
			} else {
				got.Part = pb.VectorPart(int32(v))
			}
			n = m
		default:
			n = protowire.ConsumeFieldValue(num, typ, raw)
		}
		if n < 0 {
			return got, false
		}
		raw = raw[n:]
	}
	return got, true
}

// learn the served dimension and whether the version has a short-term head from an
// upstream answer.
func (f *Front) learn(req *pb.GetEmbeddingsRequest, raw []byte) {
	got, ok := answerHead(raw)
	if !ok || got.Dim <= 0 {
		return
	}
	f.dim.Store(got.Dim)
	if req.ModelVersion == "" { // a cutover: the active version is read again
		f.versions.activeSeen(got.ModelVersion)
	}
	switch req.Part {
	case pb.VectorPart_VECTOR_PART_UNSPECIFIED, pb.VectorPart_VECTOR_PART_COMBINED:
		switch got.Part {
		case pb.VectorPart_VECTOR_PART_NEARLINE:
			f.heads.learn(got.ModelVersion, false)
		case pb.VectorPart_VECTOR_PART_COMBINED:
			f.heads.learn(got.ModelVersion, true)
		}
	case pb.VectorPart_VECTOR_PART_SHORT_TERM:
		if got.Part == pb.VectorPart_VECTOR_PART_SHORT_TERM {
			f.heads.learn(got.ModelVersion, true)
		}
	}
}

// forwardStream proxies any call (unary or streaming) to the upstream: messages both
// ways as bytes, headers and trailers back, the upstream's status returned as is.
func (f *Front) forwardStream(method string, ss grpc.ServerStream) error {
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	cs, err := f.upstream.NewStream(outgoing(ctx), desc, method, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return err
	}
	go func() {
		for {
			m := &frame{}
			if err := ss.RecvMsg(m); err != nil {
				if err == io.EOF {
					_ = cs.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if cs.SendMsg(m) != nil {
				return // the upstream ended the call: its status comes from RecvMsg
			}
		}
	}()
	first := true
	for {
		m := &frame{}
		err := cs.RecvMsg(m)
		if first {
			first = false
			if h, herr := cs.Header(); herr == nil && len(h) > 0 {
				_ = ss.SendHeader(h)
			}
		}
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			if err == io.EOF {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(m); err != nil {
			return err
		}
	}
}
