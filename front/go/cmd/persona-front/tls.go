package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc/credentials"
)

// tlsFlags: TLS / mTLS on the listener, as persona serve's --tls-cert / --tls-key /
// --tls-client-ca (services/cli/serve_cmds.py serve_config, services/serving/server.py
// server_credentials), and TLS to the upstream. Plaintext is the default of both.
type tlsFlags struct {
	cert, key, clientCA               string
	upCA, upCert, upKey, upServerName string
}

func (t *tlsFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&t.cert, "tls-cert", "", "PEM server certificate (enables TLS; with -tls-key)")
	fs.StringVar(&t.key, "tls-key", "", "PEM server private key")
	fs.StringVar(&t.clientCA, "tls-client-ca", "",
		"PEM CA of client certificates: clients must present one it signed (mTLS)")
	fs.StringVar(&t.upCA, "upstream-tls-ca", "",
		"PEM CA the upstream's certificate is verified against (enables TLS to the upstream)")
	fs.StringVar(&t.upCert, "upstream-tls-cert", "",
		"PEM client certificate for an upstream that requires mTLS (with -upstream-tls-key)")
	fs.StringVar(&t.upKey, "upstream-tls-key", "", "PEM private key of -upstream-tls-cert")
	fs.StringVar(&t.upServerName, "upstream-tls-server-name", "",
		"name verified in the upstream's certificate (default: the host of -upstream)")
}

// check refuses the combinations persona serve refuses, and their upstream twins; every
// file named must exist (none is read).
func (t *tlsFlags) check() error {
	switch {
	case (t.cert == "") != (t.key == ""):
		return errors.New("-tls-cert and -tls-key go together")
	case t.clientCA != "" && t.cert == "":
		return errors.New("-tls-client-ca needs -tls-cert and -tls-key")
	case (t.upCert == "") != (t.upKey == ""):
		return errors.New("-upstream-tls-cert and -upstream-tls-key go together")
	case t.upCert != "" && t.upCA == "":
		return errors.New("-upstream-tls-cert and -upstream-tls-key need -upstream-tls-ca")
	case t.upServerName != "" && t.upCA == "":
		return errors.New("-upstream-tls-server-name needs -upstream-tls-ca")
	}
	for _, f := range []struct{ name, path string }{{"tls-cert", t.cert}, {"tls-key", t.key},
		{"tls-client-ca", t.clientCA}, {"upstream-tls-ca", t.upCA},
		{"upstream-tls-cert", t.upCert}, {"upstream-tls-key", t.upKey}} {
		if f.path != "" {
			if err := exists("-"+f.name, f.path); err != nil {
				return err
			}
		}
	}
	return nil
}

// exists: path names a file (what refers to it names it in the error).
func exists(what, path string) error {
	st, err := os.Stat(path)
	if err == nil && st.IsDir() {
		err = fmt.Errorf("%s is a directory", path)
	}
	if err != nil {
		return fmt.Errorf("%s: %v", what, err)
	}
	return nil
}

// mode of the listener, as persona serve logs it: plaintext, TLS or mTLS.
func (t *tlsFlags) mode() string {
	switch {
	case t.clientCA != "":
		return "mTLS"
	case t.cert != "":
		return "TLS"
	}
	return "plaintext"
}

// upstream: whether the upstream is dialled with TLS.
func (t *tlsFlags) upstream() bool { return t.upCA != "" }

// serverCreds of the listener (nil: plaintext): the certificate and key; with a client CA,
// clients must present a certificate it signed (grpc's require_client_auth).
func (t *tlsFlags) serverCreds() (credentials.TransportCredentials, error) {
	if t.cert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(t.cert, t.key)
	if err != nil {
		return nil, fmt.Errorf("-tls-cert / -tls-key: %v", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.clientCA != "" {
		if cfg.ClientCAs, err = certPool("-tls-client-ca", t.clientCA); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return credentials.NewTLS(cfg), nil
}

// upstreamCreds of the upstream connection (nil: plaintext): its certificate verified
// against the CA (for the -upstream host, or -upstream-tls-server-name), with a client
// certificate when one is given.
func (t *tlsFlags) upstreamCreds() (credentials.TransportCredentials, error) {
	if t.upCA == "" {
		return nil, nil
	}
	pool, err := certPool("-upstream-tls-ca", t.upCA)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: t.upServerName, MinVersion: tls.VersionTLS12}
	if t.upCert != "" {
		cert, err := tls.LoadX509KeyPair(t.upCert, t.upKey)
		if err != nil {
			return nil, fmt.Errorf("-upstream-tls-cert / -upstream-tls-key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// certPool of the PEM certificates in path.
func certPool(what, path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", what, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s: no PEM certificate in %s", what, path)
	}
	return pool, nil
}
