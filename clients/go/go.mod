// For module-mode users (replace or vendor it: the path has no host, so `go get` never
// fetches it). The tests here build in GOPATH mode from Debian's packaged sources (no Go
// module proxy is reachable), so these requirements are the Debian 12 versions, and
// go.sum is left to `go mod tidy` where a proxy is.
module persona/clients/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
