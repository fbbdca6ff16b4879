//! Compiles `proto/angzarr/v1` with protox (a protobuf compiler in Rust), so that building
//! needs no system `protoc`.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["angzarr/v1/types.proto", "angzarr/v1/services.proto"];
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let descriptors = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Kept for gRPC server reflection.
    std::fs::write(
        out_dir.join("angzarr_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Type names let `prost_types::Any::from_msg` / `to_msg` check type URLs.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    // `Any` type URLs as every protobuf runtime writes them.
    config.type_name_domain(["."], "type.googleapis.com");
    // No `connect` helpers: they would pull tonic's transport into every crate of the contract.
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
