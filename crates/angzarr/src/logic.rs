//! The client logic a `[[domains]]` entry names: built into the binary, a Python module, a Go
//! library, or a gRPC server.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;

use angzarr_ports::ClientLogic;
use anyhow::{Context, bail};

use crate::config::DomainConfig;

/// The built-in logics, by the name `logic` gives them.
const BUILT_IN: &[&str] = &["bank"];

/// What `logic = "..."` says, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogicSpec {
    /// Rust logic compiled into the binary.
    BuiltIn(String),
    /// `python:<module>`: a Python module, imported in-process (feature `python`).
    Python(String),
    /// `go:<path>`: a Go library built with `-buildmode=c-shared` (feature `go-ffi`).
    Go(PathBuf),
    /// `grpc:<target>`: a `BusinessLogic` server, `http://host:port` or `unix:/path`.
    Grpc(String),
}

impl LogicSpec {
    pub(crate) fn parse(logic: &str) -> anyhow::Result<Self> {
        let spec = match logic.split_once(':') {
            Some(("python", module)) if !module.is_empty() => Self::Python(module.to_owned()),
            Some(("go", path)) if !path.is_empty() => Self::Go(PathBuf::from(path)),
            Some(("grpc", target)) if !target.is_empty() => Self::Grpc(target.to_owned()),
            None if BUILT_IN.contains(&logic) => Self::BuiltIn(logic.to_owned()),
            _ => bail!(
                "unknown logic {logic:?}: expected a built-in ({}), \"python:<module>\", \
                 \"go:<path to a c-shared library>\" or \"grpc:<http://host:port or unix:/path>\"",
                BUILT_IN.join(", ")
            ),
        };
        Ok(spec)
    }
}

/// Builds the client logic of `domain`. Built-in and Go logic are built with its
/// `snapshot_every`; Python and gRPC logic, built by their own code, are wrapped so that the
/// host stores the state they return as a snapshot at that interval.
pub(crate) fn build(domain: &DomainConfig) -> anyhow::Result<Arc<dyn ClientLogic>> {
    let spec =
        LogicSpec::parse(&domain.logic).with_context(|| format!("domain {:?}", domain.name))?;
    let logic: Arc<dyn ClientLogic> = match spec {
        LogicSpec::BuiltIn(name) => match name.as_str() {
            "bank" => Arc::new(angzarr_example_bank::logic(domain.snapshot_every)),
            other => unreachable!("{other} is listed in BUILT_IN without a constructor"),
        },
        LogicSpec::Grpc(target) => {
            let mut config = angzarr_bridge_grpc::GrpcConfig::default();
            config.request_timeout = domain.timeout();
            snapshotted(
                domain,
                Arc::new(
                    angzarr_bridge_grpc::GrpcLogic::new(&target, config).with_context(|| {
                        format!("domain {:?}: logic {:?}", domain.name, domain.logic)
                    })?,
                ),
            )
        }
        LogicSpec::Python(module) => snapshotted(domain, python(domain, &module)?),
        LogicSpec::Go(path) => go(domain, &path)?,
    };
    Ok(logic)
}

/// `logic`, snapshotted every `domain.snapshot_every` events by the host (if not 0).
fn snapshotted(domain: &DomainConfig, logic: Arc<dyn ClientLogic>) -> Arc<dyn ClientLogic> {
    match NonZeroU64::new(domain.snapshot_every) {
        Some(events) => Arc::new(angzarr_core::SnapshotEvery::new(logic, events)),
        None => logic,
    }
}

#[cfg(not(feature = "python"))]
fn python(domain: &DomainConfig, _module: &str) -> anyhow::Result<Arc<dyn ClientLogic>> {
    bail!(
        "domain {:?}: logic {:?} needs Python support, which this binary was built without: \
         build it with `cargo build --release --features python`",
        domain.name,
        domain.logic
    )
}

#[cfg(not(feature = "go-ffi"))]
fn go(domain: &DomainConfig, _path: &std::path::Path) -> anyhow::Result<Arc<dyn ClientLogic>> {
    bail!(
        "domain {:?}: logic {:?} needs Go support, which this binary was built without: build \
         it with `cargo build --release --features go-ffi`",
        domain.name,
        domain.logic
    )
}

#[cfg(feature = "python")]
fn python(domain: &DomainConfig, module: &str) -> anyhow::Result<Arc<dyn ClientLogic>> {
    // Runs the module's top level: start-up, before anything is served.
    let config = angzarr_bridge_python::PythonConfig::new(module)
        .paths(domain.python_path.iter().cloned())
        .deadline(domain.timeout());
    let logic = angzarr_bridge_python::PythonLogic::load(config)
        .with_context(|| format!("domain {:?}: logic {:?}", domain.name, domain.logic))?;
    Ok(Arc::new(logic))
}

#[cfg(feature = "go-ffi")]
fn go(domain: &DomainConfig, path: &std::path::Path) -> anyhow::Result<Arc<dyn ClientLogic>> {
    // One Go runtime per process: the bridge shares a library loaded twice and refuses a
    // second one, so several Go domains name one library that dispatches on the domain.
    let logic = angzarr_bridge_go::GoLogic::load(path)
        .with_context(|| format!("domain {:?}: logic {:?}", domain.name, domain.logic))?;
    Ok(Arc::new(
        logic
            .snapshot_every(domain.snapshot_every)
            .deadline(domain.timeout()),
    ))
}

/// The encoded `FileDescriptorSet` of a built-in logic's messages, for server reflection.
pub(crate) fn descriptor_set(logic: &str) -> Option<&'static [u8]> {
    match LogicSpec::parse(logic).ok()? {
        LogicSpec::BuiltIn(name) if name == "bank" => {
            Some(angzarr_example_bank::FILE_DESCRIPTOR_SET)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            LogicSpec::parse("bank").unwrap(),
            LogicSpec::BuiltIn("bank".into())
        );
        assert_eq!(
            LogicSpec::parse("python:bank.logic").unwrap(),
            LogicSpec::Python("bank.logic".into())
        );
        assert_eq!(
            LogicSpec::parse("go:target/go/libbank.so").unwrap(),
            LogicSpec::Go("target/go/libbank.so".into())
        );
        assert_eq!(
            LogicSpec::parse("grpc:unix:/run/bank.sock").unwrap(),
            LogicSpec::Grpc("unix:/run/bank.sock".into())
        );
        for wrong in ["", "Bank", "python:", "go:", "grpc:", "java:bank", "bank:"] {
            let error = LogicSpec::parse(wrong).unwrap_err().to_string();
            assert!(error.contains("python:<module>"), "{wrong:?}: {error}");
        }
    }
}
