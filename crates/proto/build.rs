//! Generates the Rust code for `proto/` with a vendored protoc, so that a
//! fresh machine needs no system protobuf compiler.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let protos = [root.join("ferrolog/v1/ferrolog.proto"), root.join("ferrolog/internal/v1/raft.proto")];
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Bytes fields are `bytes::Bytes`: batches are passed from the socket to
    // RocksDB without copying them into Vecs.
    config.bytes(["."]);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ferrolog_descriptor.bin"))
        .compile_with_config(config, &protos, &[root])?;
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Ok(())
}
