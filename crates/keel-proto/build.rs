fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .compile_protos(&["proto/peer.proto", "proto/admin.proto"], &["proto"])?;
    // etcd's lock and election APIs: etcd-client generates them but does not export the server
    // side. Their etcd message types are etcd-client's own.
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".etcdserverpb", "crate::etcd_types")
        .extern_path(".mvccpb", "crate::etcd_types")
        .compile_protos(
            &["proto/etcd/v3lock.proto", "proto/etcd/v3election.proto"],
            &["proto"],
        )?;
    Ok(())
}
