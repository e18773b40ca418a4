package kafka

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// sendResult of the records sent to one broker: how many were acknowledged, those to send
// again (the broker did not write them), and the error met.
type sendResult struct {
	sent  int
	retry []int
	err   error
}

// chunk: records of one partition in one RecordBatch.
type chunk struct {
	part int32
	idx  []int
}

// sendTo writes the records of byPart (partition -> record indexes, in order) to the
// broker at addr: one ProduceRequest per round, a round holding at most one RecordBatch per
// partition (as the broker requires), each request answered before the next is written.
// A partition that fails stops there (its later batches are retried, keeping its order).
func (p *Producer) sendTo(ctx context.Context, addr string, recs []Record,
	byPart map[int32][]int) (r sendResult) {
	var rounds [][]chunk
	partsOf := make([]int32, 0, len(byPart))
	for part := range byPart {
		partsOf = append(partsOf, part)
	}
	sort.Slice(partsOf, func(i, j int) bool { return partsOf[i] < partsOf[j] })
	for _, part := range partsOf {
		for k, idx := range split(recs, byPart[part], p.cfg.MaxBatchBytes) {
			if k == len(rounds) {
				rounds = append(rounds, nil)
			}
			rounds[k] = append(rounds[k], chunk{part, idx})
		}
	}
	c, err := p.conn(ctx, addr)
	if err != nil {
		for _, idx := range byPart {
			r.retry = append(r.retry, idx...)
		}
		r.err = err
		return r
	}
	v, err := c.version(apiProduce)
	if err != nil { // no version both speak: retrying would not help
		r.err = err
		return r
	}
	stopped := map[int32]bool{} // partitions not to send more of in this attempt
	for k, round := range rounds {
		var send []chunk
		for _, ch := range round {
			if stopped[ch.part] || err != nil {
				r.retry = append(r.retry, ch.idx...)
			} else {
				send = append(send, ch)
			}
		}
		if len(send) == 0 || err != nil {
			continue
		}
		var resp []byte
		resp, err = c.roundTrip(ctx, apiProduce, v, produceRequest(ctx, p.cfg.Topic, recs, send))
		var ce *connError
		if errors.As(err, &ce) {
			p.drop(addr, c, err)
			if ce.sent { // written, answer lost: maybe written, not sent again
				r.err = fmt.Errorf("%w (%d records of round %d not known to be written)",
					err, count(send), k)
			} else {
				r.retry, r.err = append(r.retry, flatten(send)...), err
			}
			continue // later rounds: retried (err is set)
		}
		codes, perr := parseProduce(resp, v, p.cfg.Topic)
		for _, ch := range send {
			code, ok := codes[ch.part]
			switch {
			case perr != nil:
				r.err, stopped[ch.part] = fmt.Errorf("kafka %s: produce answer: %v", addr, perr), true
			case !ok:
				r.err, stopped[ch.part] = fmt.Errorf("kafka %s: partition %d missing from the produce"+
					" answer", addr, ch.part), true
			case code == errNone:
				r.sent += len(ch.idx)
			case retriable(code):
				r.retry, r.err, stopped[ch.part] = append(r.retry, ch.idx...), Error(code), true
			default:
				r.err, stopped[ch.part] = Error(code), true
			}
		}
	}
	if err != nil && r.err == nil {
		r.err = err
	}
	return r
}

// split a partition's records into batches of about maxBytes at most (a bigger record
// goes alone).
func split(recs []Record, idx []int, maxBytes int) [][]int {
	var out [][]int
	size, from := 0, 0
	for k, i := range idx {
		s := recordSize(recs[i])
		if k > from && size+s > maxBytes {
			out, size, from = append(out, idx[from:k]), 0, k
		}
		size += s
	}
	return append(out, idx[from:])
}

func count(chs []chunk) (n int) {
	for _, ch := range chs {
		n += len(ch.idx)
	}
	return n
}

func flatten(chs []chunk) (out []int) {
	for _, ch := range chs {
		out = append(out, ch.idx...)
	}
	return out
}

// produceRequest: Produce v3..v8 (one format): no transactional id, acks -1, the broker's
// wait for the acks bounded by what ctx leaves (at most 30 s), one topic.
func produceRequest(ctx context.Context, topic string, recs []Record, send []chunk) []byte {
	wait := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait {
		wait = time.Until(dl)
	}
	if wait < time.Millisecond {
		wait = time.Millisecond
	}
	ts := time.Now().UnixMilli()
	e := &enc{}
	e.i16(-1) // transactional_id: null
	e.i16(-1) // acks: all in-sync replicas
	e.i32(int32(wait / time.Millisecond))
	e.i32(1)
	e.str(topic)
	e.i32(int32(len(send)))
	var batch []byte
	for _, ch := range send {
		batch = batch[:0]
		rs := make([]Record, len(ch.idx))
		for k, i := range ch.idx {
			rs[k] = recs[i]
		}
		batch = AppendBatch(batch, rs, ts)
		e.i32(ch.part)
		e.bytes(batch)
	}
	return e.b
}

// parseProduce reads a Produce response v3..v8: the error code of each partition of topic.
func parseProduce(resp []byte, v int16, topic string) (map[int32]int16, error) {
	d := &dec{b: resp}
	out := map[int32]int16{}
	for i, n := 0, d.array(6); i < n; i++ {
		name := d.str()
		for j, np := 0, d.array(14); j < np; j++ {
			part, code := d.i32(), d.i16()
			d.i64() // base_offset
			d.i64() // log_append_time_ms
			if v >= 5 {
				d.i64() // log_start_offset
			}
			if v >= 8 {
				for k, ne := 0, d.array(6); k < ne; k++ { // record_errors
					d.i32()
					d.str()
				}
				d.str() // error_message
			}
			if name == topic {
				out[part] = code
			}
		}
	}
	d.i32() // throttle_time_ms
	return out, d.err
}
