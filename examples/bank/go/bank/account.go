// Package bank is the bank example's domain in Go: the same decisions, events, snapshots and
// rejection reasons as the Rust example (examples/bank/src/lib.rs), byte for byte.
package bank

import (
	"github.com/angzarr-io/angzarr/examples/bank/go/bankpb"
	"github.com/angzarr-io/angzarr/go/angzarr"
)

// Logic is the bank's client logic.
var Logic = angzarr.Aggregate(apply, handle)

func apply(a *bankpb.Account, event *bankpb.BankEvent) {
	switch e := event.Kind.(type) {
	case *bankpb.BankEvent_Opened:
		a.Open, a.Owner = true, e.Opened.GetOwner()
	case *bankpb.BankEvent_Deposited:
		a.Balance += e.Deposited.GetAmount()
	case *bankpb.BankEvent_Withdrawn:
		a.Balance -= e.Withdrawn.GetAmount()
	}
}

func handle(a *bankpb.Account, command *bankpb.BankCommand) ([]*bankpb.BankEvent, error) {
	var event bankpb.BankEvent
	switch c := command.Kind.(type) {
	case *bankpb.BankCommand_Open:
		if a.Open {
			return nil, angzarr.Reject("the account is already open")
		}
		event.Kind = &bankpb.BankEvent_Opened{Opened: &bankpb.AccountOpened{Owner: c.Open.GetOwner()}}
	case nil, *bankpb.BankCommand_Deposit, *bankpb.BankCommand_Withdraw:
		if !a.Open {
			return nil, angzarr.Reject("the account is not open")
		}
	}
	switch c := command.Kind.(type) {
	case nil:
		return nil, angzarr.Reject("the command is empty")
	case *bankpb.BankCommand_Deposit:
		amount := c.Deposit.GetAmount()
		if amount == 0 {
			return nil, angzarr.Reject("a deposit must be positive")
		} else if a.Balance+amount < a.Balance {
			return nil, angzarr.Reject("the balance would overflow")
		}
		event.Kind = &bankpb.BankEvent_Deposited{Deposited: &bankpb.Deposited{Amount: amount}}
	case *bankpb.BankCommand_Withdraw:
		if c.Withdraw.GetAmount() > a.Balance {
			return nil, angzarr.Reject("insufficient funds")
		}
		event.Kind = &bankpb.BankEvent_Withdrawn{Withdrawn: &bankpb.Withdrawn{Amount: c.Withdraw.GetAmount()}}
	}
	return []*bankpb.BankEvent{&event}, nil
}
