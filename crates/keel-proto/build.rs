fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .compile_protos(&["proto/peer.proto", "proto/admin.proto"], &["proto"])?;
    Ok(())
}
