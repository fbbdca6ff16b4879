module github.com/angzarr-io/angzarr/examples/bank/go

go 1.23

require (
	github.com/angzarr-io/angzarr/go v0.0.0
	google.golang.org/protobuf v1.36.12
)

// The angzarr Go module of this repository, not a published version.
replace github.com/angzarr-io/angzarr/go => ../../../go
