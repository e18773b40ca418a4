package kafka

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// ErrUnknownTopic: the brokers do not know the topic (the producer never creates it).
var ErrUnknownTopic = errors.New("unknown to the brokers (this producer creates no topic)")

// topicMeta is what one Metadata answer says of the topic.
type topicMeta struct {
	brokers map[int32]string // node id -> HOST:PORT
	leaders []int32          // partition -> leader node id (-1: none now)
	at      time.Time
}

// metadata asks c about topic (v4+: never creating it). A topic-level error is returned
// as ErrUnknownTopic (UNKNOWN_TOPIC_OR_PARTITION) or an Error.
func (c *conn) metadata(ctx context.Context, topic string) (*topicMeta, error) {
	v, err := c.version(apiMetadata)
	if err != nil {
		return nil, err
	}
	e := &enc{}
	e.i32(1)
	e.str(topic)
	e.i8(0) // allow_auto_topic_creation: false
	if v >= 8 {
		e.i8(0) // include_cluster_authorized_operations
		e.i8(0) // include_topic_authorized_operations
	}
	resp, err := c.roundTrip(ctx, apiMetadata, v, e.b)
	if err != nil {
		return nil, err
	}
	return parseMetadata(resp, v, topic)
}

// missing: a partition the answer did not list (a leader id is >= -1).
const missing = -2

// parseMetadata reads a Metadata response v4..v8.
func parseMetadata(resp []byte, v int16, topic string) (*topicMeta, error) {
	d := &dec{b: resp}
	d.i32() // throttle_time_ms
	m := &topicMeta{brokers: map[int32]string{}, at: time.Now()}
	for i, n := 0, d.array(12); i < n; i++ {
		id, host, port := d.i32(), d.str(), d.i32()
		d.str() // rack
		m.brokers[id] = net.JoinHostPort(host, strconv.Itoa(int(port)))
	}
	d.str() // cluster_id
	d.i32() // controller_id
	var topicErr int16
	found := false
	for i, n := 0, d.array(9); i < n; i++ {
		code, name := d.i16(), d.str()
		d.i8() // is_internal
		var leaders []int32
		for j, np := 0, d.array(14); j < np; j++ {
			d.i16() // the partition's error: its leader says more (-1 when none)
			idx, leader := d.i32(), d.i32()
			if v >= 7 {
				d.i32() // leader_epoch
			}
			d.skipInt32s() // replica_nodes
			d.skipInt32s() // isr_nodes
			if v >= 5 {
				d.skipInt32s() // offline_replicas
			}
			if idx < 0 || int(idx) >= np {
				return nil, fmt.Errorf("kafka: metadata: partition %d of %d", idx, np)
			}
			if leaders == nil {
				leaders = make([]int32, np)
				for k := range leaders {
					leaders[k] = missing
				}
			}
			leaders[idx] = leader
		}
		for _, l := range leaders {
			if l == missing {
				return nil, fmt.Errorf("kafka: metadata: a partition of %s is missing", name)
			}
		}
		if v >= 8 {
			d.i32() // topic_authorized_operations
		}
		if name == topic {
			found, topicErr, m.leaders = true, code, leaders
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("kafka: metadata: %w", d.err)
	}
	switch {
	case !found || topicErr == errUnknownTopicPartition:
		return nil, fmt.Errorf("topic %q: %w", topic, ErrUnknownTopic)
	case topicErr != errNone:
		return nil, Error(topicErr)
	case len(m.leaders) == 0:
		return nil, Error(errLeaderNotAvailable)
	}
	return m, nil
}
