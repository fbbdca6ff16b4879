// Package cshared exports angzarr's C ABI from a Go library built with
// `go build -buildmode=c-shared`. Importing it is all the exports a library needs (cgo exports
// from any package linked into a c-shared library are exported); the library's package main
// registers its logic in an init function:
//
//	package main
//
//	import "github.com/angzarr-io/angzarr/go/cshared"
//
//	func init() { cshared.Serve(mydomain.Logic) }
//
//	func main() {}
//
// The ABI (version [ABIVersion]) is documented in the module's README.
package cshared

/*
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"runtime/debug"
	"unsafe"

	"github.com/angzarr-io/angzarr/go/angzarr"
)

// ABIVersion is the version of the C ABI this package exports; the host refuses a library
// of another version at load.
const ABIVersion = 1

// Handler is the byte-level form of the logic: the encoded ContextualCommand in, a status and
// the encoded BusinessReply (or an error message) out. [Serve] adapts an [angzarr.Logic].
type Handler func(command []byte, options angzarr.Options) (angzarr.Status, []byte)

var handler Handler

// Serve makes logic the library's logic. Call it from an init function of package main:
// init functions run when the host loads the library, main never does.
func Serve(logic angzarr.Logic) {
	ServeHandler(func(command []byte, options angzarr.Options) (angzarr.Status, []byte) {
		return angzarr.Call(logic, command, options)
	})
}

// ServeHandler makes h the library's logic, bytes in and bytes out (tests use it to answer
// malformed replies).
func ServeHandler(h Handler) { handler = h }

//export angzarr_abi_version
func angzarr_abi_version() C.uint32_t { return ABIVersion }

//export angzarr_handle
func angzarr_handle(snapshotEvery C.uint64_t, command *C.uint8_t, commandLen C.size_t, out **C.uint8_t, outLen *C.size_t) (status C.int32_t) {
	var reply []byte
	defer func() {
		// A panic must never unwind into the host: it becomes a failure with its stack.
		if recovered := recover(); recovered != nil {
			status, reply = C.int32_t(angzarr.StatusFailed), []byte(fmt.Sprintf("panic: %v\n\n%s", recovered, debug.Stack()))
		}
		// C memory, so that the host may keep it past this call; freed by angzarr_free.
		*out, *outLen = (*C.uint8_t)(C.CBytes(reply)), C.size_t(len(reply))
	}()
	if handler == nil {
		reply = []byte("the library serves no logic: call cshared.Serve from an init function of its package main")
		return C.int32_t(angzarr.StatusFailed)
	}
	// Read in place: the host keeps the buffer alive for the call, and proto.Unmarshal
	// copies what it keeps (strings and bytes), so nothing refers to it afterwards.
	var input []byte
	if commandLen > 0 { // never a slice over a host placeholder pointer
		input = unsafe.Slice((*byte)(unsafe.Pointer(command)), int(commandLen))
	}
	s, r := handler(input, angzarr.Options{SnapshotEvery: uint64(snapshotEvery)})
	reply = r
	return C.int32_t(s)
}

//export angzarr_free
func angzarr_free(buffer unsafe.Pointer) { C.free(buffer) }
