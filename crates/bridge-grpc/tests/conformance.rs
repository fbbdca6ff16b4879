//! The cross-language suite through the gRPC bridge: the bank served by `serve_logic` and
//! called by `GrpcLogic`, over a Unix domain socket and over loopback TCP; the faults from a
//! misbehaving server, a target nobody listens on and a child process that dies mid-call.

mod common;

mod unix {
    angzarr_conformance::bridge_suite!(crate::common::GrpcHarness::new(
        crate::common::Transport::Unix
    ));
}

mod tcp {
    angzarr_conformance::bridge_suite!(crate::common::GrpcHarness::new(
        crate::common::Transport::Tcp
    ));
}
