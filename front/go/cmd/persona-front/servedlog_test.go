package main

import (
	"strings"
	"testing"
)

func servedSettings(t *testing.T, env map[string]string, args ...string) (*settings, error) {
	t.Helper()
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	return loadSettings(append([]string{"-upstream", "u:1", "-store", "s:1"}, args...), lookup)
}

func TestServedLogSettings(t *testing.T) {
	s, err := servedSettings(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	// persona serve's defaults (ServedLogConfig, KafkaConfig.bootstrap)
	if f := s.served; f.rate != 0.01 || f.topic != "persona.served" || f.queue != 10000 ||
		strings.Join(f.brokers, ",") != "127.0.0.1:9092" {
		t.Fatalf("defaults %+v", f)
	}
	env := map[string]string{"PERSONA_SERVED_LOG_RATE": "1", "PERSONA_SERVED_TOPIC": "t.served",
		"PERSONA_SERVED_LOG_QUEUE": "7", "PERSONA_BOOTSTRAP": "k1:9092, k2:9093"}
	if s, err = servedSettings(t, env); err != nil {
		t.Fatal(err)
	}
	if f := s.served; f.rate != 1 || f.topic != "t.served" || f.queue != 7 ||
		strings.Join(f.brokers, ",") != "k1:9092,k2:9093" {
		t.Fatalf("from the environment %+v", f)
	}
	if c := s.served.config(); c.Rate != 1 || c.Queue != 7 || c.Producer == nil {
		t.Fatalf("config %+v", c)
	}
	if s, err = servedSettings(t, env, "-served-log-rate", "0.5", "-kafka", "k3:1"); err != nil ||
		s.served.rate != 0.5 || s.served.brokers[0] != "k3:1" { // a flag wins
		t.Fatalf("flags: %v %+v", err, s.served)
	}
	if s, err = servedSettings(t, map[string]string{"PERSONA_SERVED_LOG_RATE": "0",
		"PERSONA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "-kafka", ""); err != nil ||
		s.served.config().Producer != nil { // off: nothing to refuse
		t.Fatalf("rate 0: %v", err)
	}
	for _, c := range []struct {
		env  map[string]string
		args []string
		says string
	}{
		{nil, []string{"-kafka", " , "}, "-kafka (PERSONA_BOOTSTRAP) is empty"},
		{map[string]string{"PERSONA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, nil,
			"PERSONA_KAFKA_SECURITY_PROTOCOL=SASL_SSL: the front's served log speaks plaintext"},
		{map[string]string{"PERSONA_KAFKA_SECURITY_PROTOCOL": "ssl"}, nil, "plaintext Kafka only"},
		{map[string]string{"PERSONA_SERVED_LOG_RATE": "1.5"}, nil, "within [0, 1]"},
		{map[string]string{"PERSONA_SERVED_LOG_RATE": "NaN"}, nil, "within [0, 1]"},
		{map[string]string{"PERSONA_SERVED_LOG_RATE": "lots"}, nil, "PERSONA_SERVED_LOG_RATE"},
		{nil, []string{"-served-log-queue", "0"}, "give 1 or more"},
		{nil, []string{"-served-topic", ""}, "-served-topic (PERSONA_SERVED_TOPIC) is empty"},
	} {
		_, err := servedSettings(t, c.env, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.says) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v %v: %v, want one line saying %q", c.env, c.args, err, c.says)
		}
	}
	for _, plain := range []string{"PLAINTEXT", "plaintext", ""} {
		env := map[string]string{"PERSONA_KAFKA_SECURITY_PROTOCOL": plain}
		if _, err := servedSettings(t, env); err != nil {
			t.Errorf("%q: %v", plain, err)
		}
	}
}
