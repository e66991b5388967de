//! Generates etcd's API messages (from etcd's own .proto files, as the etcd-client crate ships them)
//! and Keel's peer and admin messages with prost alone, so the state machine can use them without
//! tonic; the gRPC services over these messages are generated in `keel-rpc`. The JSON mapping of
//! etcd's messages (for the HTTP/JSON gateway) comes from pbjson, with grpc-gateway's conventions as
//! etcd configures them: proto field names, 64-bit integers as strings, defaults left out.

use std::path::PathBuf;

/// The etcd packages whose messages the gateway speaks as JSON.
const JSON_PACKAGES: [&str; 5] = [
    ".etcdserverpb",
    ".mvccpb",
    ".authpb",
    ".v3lockpb",
    ".v3electionpb",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("descriptors.bin");
    prost_build::Config::new()
        .file_descriptor_set_path(&descriptors)
        .compile_protos(
            &[
                "proto/etcd/api/etcdserverpb/rpc.proto",
                "proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
                "proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
                "proto/peer.proto",
                "proto/admin.proto",
            ],
            &["proto"],
        )?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&JSON_PACKAGES)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
