// The bank's client logic as a c-shared library for angzarr:
//
//	go build -buildmode=c-shared -o bank.so .
package main

import (
	"github.com/angzarr-io/angzarr/examples/bank/go/bank"
	"github.com/angzarr-io/angzarr/go/cshared"
)

func init() { cshared.Serve(bank.Logic) }

func main() {}
