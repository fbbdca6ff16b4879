//! Compiles the example's messages with protox: no system `protoc` needed.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/bank.proto");
    let descriptors = protox::compile(["bank.proto"], ["proto"])?;
    // Kept for gRPC server reflection, so that clients find the commands and events.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("bank_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new()
        .enable_type_names()
        // The prefix every protobuf runtime writes, for `Any::from_msg` too.
        .type_name_domain(["."], "type.googleapis.com")
        .compile_fds(descriptors)?;
    Ok(())
}
