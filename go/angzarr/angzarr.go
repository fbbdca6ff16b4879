// Package angzarr is client logic for angzarr written in Go: an aggregate's state, commands
// and events as protobuf messages, decided on in-process by the angzarr server through a
// c-shared library (see package cshared).
//
// A domain is written as two functions handed to [Aggregate]; the package folds the history,
// unpacks the commands, packs the events and returns the state exactly as angzarr's Rust
// NativeLogic does, so that both give the same bytes.
package angzarr

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strings"

	pb "github.com/angzarr-io/angzarr/go/angzarrv1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Options are the host's settings for one domain, passed with every command.
type Options struct {
	// SnapshotEvery: the state is returned as snapshot_state (persisted) whenever the
	// aggregate's event count crosses a multiple of it; 0 never snapshots.
	SnapshotEvery uint64
}

// Logic decides on commands: what the host calls. Most domains use [Aggregate]; a Logic
// written by hand returns an [*Error] to report an undecodable command, history or snapshot.
type Logic interface {
	Handle(command *pb.ContextualCommand, options Options) (*pb.BusinessReply, error)
}

// LogicFunc is a function used as [Logic].
type LogicFunc func(*pb.ContextualCommand, Options) (*pb.BusinessReply, error)

// Handle calls f.
func (f LogicFunc) Handle(command *pb.ContextualCommand, options Options) (*pb.BusinessReply, error) {
	return f(command, options)
}

// Domains serves several domains from one library (a process runs one Go runtime, so one
// library serves every Go domain), dispatching on the command's cover domain.
type Domains map[string]Logic

// Handle calls the logic of the command's domain.
func (d Domains) Handle(command *pb.ContextualCommand, options Options) (*pb.BusinessReply, error) {
	domain := command.GetCommand().GetCover().GetDomain()
	logic, ok := d[domain]
	if !ok {
		return nil, Errorf(StatusInvalidCommand, "this library serves no domain %q", domain)
	}
	return logic.Handle(command, options)
}

// Status is how a call ended, as it crosses the C ABI.
type Status int32

// The statuses of the C ABI. Any error that is not an [*Error] is StatusFailed.
const (
	StatusOK              Status = 0
	StatusInvalidCommand  Status = 1
	StatusInvalidHistory  Status = 2
	StatusInvalidSnapshot Status = 3
	StatusFailed          Status = 4
)

// Error is an error with the status it crosses the ABI as.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf makes an [*Error].
func Errorf(status Status, format string, args ...any) error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

// Rejection refuses a command: nothing is written and the reason goes back to the caller.
type Rejection struct{ Reason string }

func (r *Rejection) Error() string { return "rejected: " + r.Reason }

// Reject refuses a command: `return nil, angzarr.Reject("insufficient funds")`.
func Reject(reason string) error { return &Rejection{Reason: reason} }

// TypeURLPrefix is the prefix of the type URLs written, the one every protobuf runtime packs
// Any with. Any prefix is accepted on reading: only the name after the last '/' counts.
const TypeURLPrefix = "type.googleapis.com/"

// marshal is deterministic so that equal messages give equal bytes; for messages without
// maps the bytes are also prost's (fields in number order, defaults omitted).
var marshal = proto.MarshalOptions{Deterministic: true}

// Pack packs m into an Any under its standard type URL.
func Pack(m proto.Message) (*anypb.Any, error) {
	value, err := marshal.Marshal(m)
	if err != nil {
		return nil, err
	}
	return &anypb.Any{TypeUrl: TypeURLPrefix + string(m.ProtoReflect().Descriptor().FullName()), Value: value}, nil
}

// Unpack decodes any into a new M if it holds one (under any type URL prefix).
func Unpack[M proto.Message](any *anypb.Any) (M, error) {
	var zero M
	name := string(zero.ProtoReflect().Descriptor().FullName())
	url := any.GetTypeUrl()
	slash := strings.LastIndexByte(url, '/')
	if slash < 0 || url[slash+1:] != name {
		return zero, fmt.Errorf("expected a %s, found %q", name, url)
	}
	m := zero.ProtoReflect().Type().New().Interface().(M)
	if err := proto.Unmarshal(any.GetValue(), m); err != nil {
		return zero, fmt.Errorf("undecodable %s: %v", url, err)
	}
	return m, nil
}

// Aggregate is the logic of an aggregate whose state is an S, commands Cs and events Es (all
// generated protobuf message pointers). apply folds one event into the state and must not
// fail (events are facts); handle decides which events a command causes, or refuses it with
// [Reject], and must not change the state. Any other error from handle, or a panic, fails the
// call.
func Aggregate[S, C, E proto.Message](apply func(S, E), handle func(S, C) ([]E, error)) Logic {
	return LogicFunc(func(command *pb.ContextualCommand, options Options) (*pb.BusinessReply, error) {
		return decide(apply, handle, command, options)
	})
}

func decide[S, C, E proto.Message](apply func(S, E), handle func(S, C) ([]E, error), command *pb.ContextualCommand, options Options) (*pb.BusinessReply, error) {
	book := command.GetEvents()
	var state S
	var next uint64
	if snapshot := book.GetSnapshot(); snapshot != nil {
		// Folding from an empty state would skip the events the snapshot claims to hold.
		if snapshot.GetState() == nil {
			return nil, Errorf(StatusInvalidSnapshot, "the snapshot has no state")
		}
		var err error
		if state, err = Unpack[S](snapshot.GetState()); err != nil {
			return nil, Errorf(StatusInvalidSnapshot, "%v", err)
		}
		next = snapshot.GetSequence() + 1
		if next == 0 { // saturate, as the Rust logic does
			next--
		}
	} else {
		state = state.ProtoReflect().Type().New().Interface().(S)
	}
	for _, page := range book.GetPages() {
		if page.GetPayload() == nil {
			return nil, Errorf(StatusInvalidHistory, "event %d has no payload", page.GetSequence())
		}
		event, err := Unpack[E](page.GetPayload())
		if err != nil {
			return nil, Errorf(StatusInvalidHistory, "an event: %v", err)
		}
		apply(state, event)
		next = page.GetSequence() + 1
	}
	first := next
	var pages []*pb.EventPage
	for _, page := range command.GetCommand().GetPages() {
		c, err := Unpack[C](page.GetPayload())
		if err != nil {
			return nil, Errorf(StatusInvalidCommand, "%v", err)
		}
		events, err := handle(state, c)
		if rejection := (*Rejection)(nil); errors.As(err, &rejection) {
			return &pb.BusinessReply{Outcome: &pb.BusinessReply_Rejection{Rejection: &pb.Rejection{Reason: rejection.Reason}}}, nil
		} else if err != nil {
			return nil, err
		}
		for _, event := range events {
			apply(state, event)
			payload, err := Pack(event)
			if err != nil {
				return nil, err
			}
			pages = append(pages, &pb.EventPage{Sequence: next, Payload: payload})
			next++
		}
	}
	emitted := &pb.EventsEmitted{Pages: pages}
	// The state goes back with every reply that changed it, so that the next command is
	// handed it instead of the history; it is persisted only at the snapshot interval.
	if len(pages) > 0 {
		packed, err := Pack(state)
		if err != nil {
			return nil, err
		}
		if every := options.SnapshotEvery; every > 0 && next/every > first/every {
			emitted.SnapshotState = packed
		} else {
			emitted.State = packed
		}
	}
	return &pb.BusinessReply{Outcome: &pb.BusinessReply_Events{Events: emitted}}, nil
}

// Call is one call of the C ABI in Go terms: it decodes the encoded ContextualCommand, runs
// logic (a panic becomes StatusFailed with its value and stack) and returns the status with
// the encoded BusinessReply (StatusOK) or the error message.
func Call(logic Logic, command []byte, options Options) (status Status, out []byte) {
	defer func() {
		if recovered := recover(); recovered != nil {
			status, out = StatusFailed, []byte(fmt.Sprintf("panic: %v\n\n%s", recovered, debug.Stack()))
		}
	}()
	var contextual pb.ContextualCommand
	if err := proto.Unmarshal(command, &contextual); err != nil {
		return StatusInvalidCommand, []byte("undecodable ContextualCommand: " + err.Error())
	}
	reply, err := logic.Handle(&contextual, options)
	if err != nil {
		var typed *Error
		if errors.As(err, &typed) {
			return typed.Status, []byte(typed.Message)
		}
		return StatusFailed, []byte(err.Error())
	}
	if reply == nil {
		return StatusFailed, []byte("the logic returned no reply and no error")
	}
	encoded, err := marshal.Marshal(reply)
	if err != nil {
		return StatusFailed, []byte("cannot encode the reply: " + err.Error())
	}
	return StatusOK, encoded
}
