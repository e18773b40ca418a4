package resp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// tlsNode: a node answering INFO cluster over TLS with a certificate for 127.0.0.1 that a
// CA of its own signed; its address and a pool trusting that CA.
func tlsNode(t *testing.T) (string, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go answerAll(lis)
	return lis.Addr().String(), pool
}

// rediss://: the store is reached over TLS and the node's certificate verified for its
// host; a node whose certificate no trusted CA signed, or that names another host, is
// refused (redis-py's defaults: ssl_cert_reqs required, ssl_check_hostname true).
func TestTLSStoreVerifiesTheNode(t *testing.T) {
	addr, pool := tlsNode(t)
	s, err := Open([]string{addr}, Auth{TLS: &tls.Config{RootCAs: pool}}, 5*time.Second, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	reply, err := s.Do([]Cmd{{Args: [][]byte{[]byte("INFO"), []byte("cluster")}}}, time.Now().Add(5*time.Second))
	if err != nil || !strings.Contains(string(reply[0].Str), "cluster_enabled:0") || s.Cluster() {
		t.Fatalf("over TLS: %v %v", reply, err)
	}
	for name, cfg := range map[string]*tls.Config{
		"an unknown CA": {},
		"another host":  {RootCAs: pool, ServerName: "elsewhere.example"},
	} {
		if _, err := Dial(addr, Auth{TLS: cfg}, 5*time.Second); err == nil || !strings.Contains(err.Error(), "TLS") {
			t.Fatalf("%s: %v", name, err)
		}
	}
	c, err := Dial(addr, Auth{}, time.Second) // plain TCP to a TLS node: connects, no answer
	if err == nil {
		defer c.Close()
		_, err = c.Do(AppendCommand(nil, []byte("INFO"), []byte("cluster")), 1, time.Now().Add(time.Second))
	}
	if err == nil {
		t.Fatal("plain TCP to a TLS node answered")
	}
}
