package angzarr

import (
	"strings"
	"testing"

	pb "github.com/angzarr-io/angzarr/go/angzarrv1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// A counter over angzarr's own messages: the state is a Snapshot whose sequence is the total,
// commands and events are Rejections whose reason is the amount in 'x's.
var counter = Aggregate(
	func(s *pb.Snapshot, e *pb.Rejection) { s.Sequence += uint64(len(e.Reason)) },
	func(s *pb.Snapshot, c *pb.Rejection) ([]*pb.Rejection, error) {
		switch c.Reason {
		case "":
			return nil, Reject("nothing to add")
		case "panic":
			panic("on purpose")
		}
		return []*pb.Rejection{c}, nil
	},
)

func pack(t *testing.T, url string, m proto.Message) *anypb.Any {
	t.Helper()
	value, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: url, Value: value}
}

func command(t *testing.T, snapshot *pb.Snapshot, history []string, commands ...string) []byte {
	t.Helper()
	book := &pb.EventBook{Snapshot: snapshot}
	first := uint64(0)
	if snapshot != nil {
		first = snapshot.Sequence + 1
	}
	for i, h := range history {
		book.Pages = append(book.Pages, &pb.EventPage{Sequence: first + uint64(i), Payload: pack(t, "/angzarr.v1.Rejection", &pb.Rejection{Reason: h})})
	}
	cmd := &pb.CommandBook{Cover: &pb.Cover{Domain: "counter"}}
	for _, c := range commands {
		cmd.Pages = append(cmd.Pages, &pb.CommandPage{Payload: pack(t, "example.com/x/angzarr.v1.Rejection", &pb.Rejection{Reason: c})})
	}
	b, err := proto.Marshal(&pb.ContextualCommand{Events: book, Command: cmd})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func run(t *testing.T, logic Logic, snapshotEvery uint64, cmd []byte) *pb.BusinessReply {
	t.Helper()
	status, out := Call(logic, cmd, Options{SnapshotEvery: snapshotEvery})
	if status != StatusOK {
		t.Fatalf("status %d: %s", status, out)
	}
	var reply pb.BusinessReply
	if err := proto.Unmarshal(out, &reply); err != nil {
		t.Fatal(err)
	}
	return &reply
}

func TestAnyPrefixIsReadAndTheStandardOneWritten(t *testing.T) {
	snapshot := &pb.Snapshot{Sequence: 0, State: pack(t, "/angzarr.v1.Snapshot", &pb.Snapshot{Sequence: 10})}
	reply := run(t, counter, 1, command(t, snapshot, []string{"x", "xx"}, "xxxxx"))
	emitted := reply.GetEvents()
	if len(emitted.GetPages()) != 1 || emitted.Pages[0].Sequence != 3 {
		t.Fatalf("pages %v", emitted.GetPages())
	}
	if url := emitted.Pages[0].Payload.TypeUrl; url != "type.googleapis.com/angzarr.v1.Rejection" {
		t.Fatalf("event type URL %q", url)
	}
	state, err := Unpack[*pb.Snapshot](emitted.GetSnapshotState())
	if err != nil || state.Sequence != 18 || emitted.State != nil {
		t.Fatalf("snapshot_state %v (%v), state %v", state, err, emitted.State)
	}
}

func TestSnapshotsOnlyWhenTheCountCrossesAMultiple(t *testing.T) {
	// History 0..=2 (3 events): two more cross 4 with every=4, not with every=6.
	for every, snapshot := range map[uint64]bool{0: false, 4: true, 6: false} {
		emitted := run(t, counter, every, command(t, nil, []string{"x", "x", "x"}, "x", "x")).GetEvents()
		if (emitted.SnapshotState != nil) != snapshot || (emitted.State != nil) == snapshot {
			t.Errorf("every %d: snapshot_state %v, state %v", every, emitted.SnapshotState, emitted.State)
		}
	}
	if emitted := run(t, counter, 1, command(t, nil, nil)).GetEvents(); emitted.SnapshotState != nil || emitted.State != nil {
		t.Errorf("no event, yet a state: %v", emitted)
	}
}

func TestRejectionsErrorsAndPanics(t *testing.T) {
	if reason := run(t, counter, 0, command(t, nil, nil, "x", "")).GetRejection().GetReason(); reason != "nothing to add" {
		t.Errorf("rejection %q", reason)
	}
	status, out := Call(counter, command(t, nil, nil, "panic"), Options{})
	if status != StatusFailed || !strings.HasPrefix(string(out), "panic: on purpose") || !strings.Contains(string(out), "goroutine") {
		t.Errorf("panic: %d %s", status, out)
	}
	snapshot := &pb.Snapshot{Sequence: 4}
	if status, out := Call(counter, command(t, snapshot, nil, "x"), Options{}); status != StatusInvalidSnapshot || string(out) != "the snapshot has no state" {
		t.Errorf("snapshot: %d %s", status, out)
	}
	if status, _ := Call(counter, []byte{0xff}, Options{}); status != StatusInvalidCommand {
		t.Errorf("undecodable: %d", status)
	}
	domains := Domains{"other": counter}
	if status, out := Call(domains, command(t, nil, nil, "x"), Options{}); status != StatusInvalidCommand || !strings.Contains(string(out), `"counter"`) {
		t.Errorf("unknown domain: %d %s", status, out)
	}
}

func TestUnpackMatchesTheNameAfterTheLastSlashOnly(t *testing.T) {
	for url, ok := range map[string]bool{
		"type.googleapis.com/angzarr.v1.Cover":  true,
		"/angzarr.v1.Cover":                     true,
		"a/b/angzarr.v1.Cover":                  true,
		"angzarr.v1.Cover":                      false,
		"type.googleapis.com/v1.Cover":          false,
		"type.googleapis.com/angzarr.v1.Cover/": false,
	} {
		if _, err := Unpack[*pb.Cover](&anypb.Any{TypeUrl: url}); (err == nil) != ok {
			t.Errorf("%q: %v", url, err)
		}
	}
}
