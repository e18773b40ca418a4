package main

import (
	"flag"
	"fmt"
	"log"
	"strings"
	"time"

	"persona/front/go/front"
	"persona/front/go/kafka"
)

// servedFlags: the served log of the GetEmbeddings the front answers itself
// (front/servedlog.go), with persona serve's served-log settings and defaults
// (services/serving/config.py ServedLogConfig, services/config.py KafkaConfig.bootstrap).
type servedFlags struct {
	rate             float64
	topic, bootstrap string
	queue            int
	brokers          []string // -kafka's HOST:PORT list
}

// servedLogCloseBound: at shutdown, what the served log holds is sent within this long.
const servedLogCloseBound = 5 * time.Second

func (f *servedFlags) define(fs *flag.FlagSet) {
	fs.Float64Var(&f.rate, "served-log-rate", 0.01, "share of the answered rows of local"+
		" GetEmbeddings written to the served log, as persona serve's (0: off, 1: all)")
	fs.StringVar(&f.topic, "served-topic", "persona.served",
		"the served-log topic (persona serve creates it; the front does not)")
	fs.IntVar(&f.queue, "served-log-queue", 10000, "answers waiting for the served log's"+
		" producer at most; beyond, an answer's sample is dropped and counted")
	fs.StringVar(&f.bootstrap, "kafka", "127.0.0.1:9092",
		"Kafka bootstrap brokers of the served log, comma-separated HOST:PORT (plaintext only)")
}

// check the served-log settings (lookup: os.LookupEnv). With a rate > 0 the front refuses
// to start where its records would go missing: no broker, or Kafka TLS / SASL configured
// for persona (PERSONA_KAFKA_SECURITY_PROTOCOL), which the front's producer does not speak.
func (f *servedFlags) check(lookup func(string) (string, bool)) error {
	if !(f.rate >= 0 && f.rate <= 1) {
		return fmt.Errorf("-served-log-rate (PERSONA_SERVED_LOG_RATE) %v: give a share"+
			" within [0, 1]", f.rate)
	}
	if f.queue < 1 {
		return fmt.Errorf("-served-log-queue (PERSONA_SERVED_LOG_QUEUE) %d: give 1 or more",
			f.queue)
	}
	f.brokers = nil
	for _, a := range strings.Split(f.bootstrap, ",") {
		if a = strings.TrimSpace(a); a != "" {
			f.brokers = append(f.brokers, a)
		}
	}
	if f.rate == 0 {
		return nil
	}
	if p, _ := lookup("PERSONA_KAFKA_SECURITY_PROTOCOL"); strings.TrimSpace(p) != "" &&
		!strings.EqualFold(strings.TrimSpace(p), "PLAINTEXT") {
		return fmt.Errorf("PERSONA_KAFKA_SECURITY_PROTOCOL=%s: the front's served log speaks"+
			" plaintext Kafka only; run the front with -served-log-rate 0 (its local answers"+
			" then stay out of the served log)", strings.TrimSpace(p))
	}
	if len(f.brokers) == 0 {
		return fmt.Errorf("-served-log-rate %v needs Kafka: -kafka (PERSONA_BOOTSTRAP) is"+
			" empty; give the brokers or -served-log-rate 0", f.rate)
	}
	if strings.TrimSpace(f.topic) == "" {
		return fmt.Errorf("-served-topic (PERSONA_SERVED_TOPIC) is empty")
	}
	return nil
}

// config of the front's served log (off at rate 0); the producer dials nothing yet.
func (f *servedFlags) config() front.ServedLogConfig {
	if f.rate <= 0 {
		return front.ServedLogConfig{}
	}
	return front.ServedLogConfig{Rate: f.rate, Queue: f.queue,
		Producer: kafka.NewProducer(kafka.Config{Bootstrap: f.brokers, Topic: f.topic})}
}

// closeServedLog, after the gRPC server stopped: what the served log holds is sent within
// servedLogCloseBound, then its counts are logged.
func closeServedLog(f *front.Front, on bool) {
	if !on {
		return
	}
	sent, failed, dropped := f.CloseServedLog(servedLogCloseBound)
	log.Printf("persona-front: served log closed (rows sent %d, failed %d, dropped %d)",
		sent, failed, dropped)
}
