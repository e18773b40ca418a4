package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// pki writes a CA (name.pem) and leaves it signed (leaf.pem / leaf.key) into dir.
type pki struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t *testing.T, dir, name string) *pki {
	ca := &pki{dir: dir}
	ca.cert, ca.key = ca.issue(t, name, nil, true)
	return ca
}

// issue a certificate (self-signed for the CA itself) and write its PEM files.
func (ca *pki) issue(t *testing.T, name string, ips []net.IP, isCA bool) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IPAddresses: ips, IsCA: isCA,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	parent, signer := tmpl, key
	if !isCA {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	write := func(file, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(ca.dir, file), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".pem", "CERTIFICATE", der)
	write(name+".key", "EC PRIVATE KEY", kb)
	cert, _ := x509.ParseCertificate(der)
	return cert, key
}

func (ca *pki) path(name string) string { return filepath.Join(ca.dir, name) }

// serveHealth serves health on a loopback port with the listener's creds of flags.
func serveHealth(t *testing.T, flags tlsFlags) string {
	creds, err := flags.serverCreds()
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// check dials addr with the upstream creds of flags: the health check's error.
func check(t *testing.T, addr string, flags tlsFlags) error {
	creds, err := flags.upstreamCreds()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// The listener's and the upstream's credentials meet: TLS, mTLS, and the refusals.
func TestTLSCredentials(t *testing.T) {
	dir := t.TempDir()
	ca, rogue := newCA(t, dir, "ca"), newCA(t, dir, "rogue")
	ca.issue(t, "server", []net.IP{net.IPv4(127, 0, 0, 1)}, false)
	ca.issue(t, "client", nil, false)
	rogue.issue(t, "intruder", nil, false)
	server := tlsFlags{cert: ca.path("server.pem"), key: ca.path("server.key")}
	addr := serveHealth(t, server)
	if err := check(t, addr, tlsFlags{upCA: ca.path("ca.pem")}); err != nil {
		t.Fatal("TLS:", err)
	}
	if err := check(t, addr, tlsFlags{upCA: rogue.path("rogue.pem")}); err == nil {
		t.Fatal("a server of another CA trusted")
	}
	if err := check(t, addr, tlsFlags{upCA: ca.path("ca.pem"), upServerName: "elsewhere"}); err == nil {
		t.Fatal("a server name the certificate does not hold accepted")
	}
	server.clientCA = ca.path("ca.pem")
	mtls := serveHealth(t, server)
	good := tlsFlags{upCA: ca.path("ca.pem"), upCert: ca.path("client.pem"), upKey: ca.path("client.key")}
	if err := check(t, mtls, good); err != nil {
		t.Fatal("mTLS:", err)
	}
	for _, bad := range []tlsFlags{{upCA: ca.path("ca.pem")},
		{upCA: ca.path("ca.pem"), upCert: rogue.path("intruder.pem"), upKey: rogue.path("intruder.key")}} {
		if err := check(t, mtls, bad); err == nil {
			t.Fatalf("mTLS served %+v", bad)
		}
	}
	if server.mode() != "mTLS" || (&tlsFlags{cert: "c", key: "k"}).mode() != "TLS" ||
		(&tlsFlags{}).mode() != "plaintext" || !good.upstream() || server.upstream() {
		t.Fatal("modes")
	}
	// files that exist but do not hold what they should: refused at start
	notPEM := filepath.Join(dir, "not.pem")
	_ = os.WriteFile(notPEM, []byte("x"), 0o600)
	for _, c := range []struct {
		f    tlsFlags
		want string
	}{
		{tlsFlags{cert: notPEM, key: ca.path("server.key")}, "-tls-cert / -tls-key"},
		{tlsFlags{cert: ca.path("server.pem"), key: ca.path("server.key"), clientCA: notPEM}, "-tls-client-ca: no PEM"},
		{tlsFlags{upCA: notPEM}, "-upstream-tls-ca: no PEM"},
		{tlsFlags{upCA: ca.path("ca.pem"), upCert: ca.path("client.pem"), upKey: notPEM}, "-upstream-tls-cert / -upstream-tls-key"},
	} {
		_, err := c.f.serverCreds()
		if c.f.upCA != "" {
			_, err = c.f.upstreamCreds()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.f, err, c.want)
		}
	}
}
