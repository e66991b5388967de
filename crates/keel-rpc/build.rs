//! Generates only the gRPC services (server and client sides): every message is keel-proto's, so
//! prost generates no types here (extern paths).

/// The protocol packages and where their messages are.
const MESSAGES: [(&str, &str); 7] = [
    (".etcdserverpb", "::keel_proto::etcdserverpb"),
    (".mvccpb", "::keel_proto::mvccpb"),
    (".authpb", "::keel_proto::authpb"),
    (".v3lockpb", "::keel_proto::v3lock"),
    (".v3electionpb", "::keel_proto::v3election"),
    (".keelpb.peer", "::keel_proto::peer"),
    (".keelpb.admin", "::keel_proto::admin"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::configure();
    for (proto, rust) in MESSAGES {
        config = config.extern_path(proto, rust);
    }
    config.compile_protos(
        &[
            "../keel-proto/proto/etcd/api/etcdserverpb/rpc.proto",
            "../keel-proto/proto/etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
            "../keel-proto/proto/etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
            "../keel-proto/proto/peer.proto",
            "../keel-proto/proto/admin.proto",
        ],
        &["../keel-proto/proto"],
    )?;
    println!("cargo:rerun-if-changed=../keel-proto/proto");
    Ok(())
}
