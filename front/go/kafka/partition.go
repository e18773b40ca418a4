package kafka

import "hash/crc32"

// Partition of a record with this key among n partitions, as librdkafka's default
// partitioner `consistent_random` chooses it, so that a user's records land where Python's
// producer (confluent-kafka, services/common/kafka.py, which leaves `partitioner` at its
// default) puts them:
//
//   - librdkafka CONFIGURATION.md: `partitioner` defaults to `consistent_random`;
//   - src/rdkafka_msg.c rd_kafka_msg_partitioner_consistent_random: an empty (or NULL) key
//     is partitioned at random, else rd_kafka_msg_partitioner_consistent:
//     `rd_crc32(key, keylen) % partition_cnt` (a uint32 modulo: unsigned);
//   - src/rdcrc32.h rd_crc32: width 32, poly 0x04c11db7, init and xorout 0xffffffff,
//     reflected in and out (or zlib's crc32): the IEEE CRC-32, Go's crc32.ChecksumIEEE.
//
// random(n) is used for an empty key (a number in [0, n)).
func Partition(key []byte, n int, random func(int) int) int {
	if len(key) == 0 {
		return random(n)
	}
	return int(crc32.ChecksumIEEE(key) % uint32(n))
}
