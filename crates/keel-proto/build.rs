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
    // etcd's Auth service: its messages are etcd-client's but for AuthStatus (see auth.proto).
    let mut auth = tonic_prost_build::configure()
        .build_client(false)
        .extern_path(
            ".etcdserverpb.ResponseHeader",
            "crate::etcd_types::ResponseHeader",
        );
    for msg in AUTH_MESSAGES {
        for side in ["Request", "Response"] {
            auth = auth.extern_path(
                format!(".etcdserverpb.{msg}{side}"),
                format!("::etcd_client::proto::Pb{msg}{side}"),
            );
        }
    }
    auth.compile_protos(&["proto/etcd/auth.proto"], &["proto"])?;
    Ok(())
}

/// The Auth messages etcd-client exports (as `Pb<name>Request`/`Pb<name>Response`).
const AUTH_MESSAGES: [&str; 16] = [
    "AuthEnable",
    "AuthDisable",
    "Authenticate",
    "AuthUserAdd",
    "AuthUserGet",
    "AuthUserList",
    "AuthUserDelete",
    "AuthUserChangePassword",
    "AuthUserGrantRole",
    "AuthUserRevokeRole",
    "AuthRoleAdd",
    "AuthRoleGet",
    "AuthRoleList",
    "AuthRoleDelete",
    "AuthRoleGrantPermission",
    "AuthRoleRevokePermission",
];
