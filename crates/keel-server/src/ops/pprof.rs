//! --enable-pprof: a CPU profile of the member at `/debug/pprof/profile?seconds=N` (default 30),
//! in pprof's protobuf format (`go tool pprof http://host:2379/debug/pprof/profile` reads it, as
//! it reads etcd's), sampled at 100 Hz by pprof-rs. One profile at a time, as Go's.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pprof::protos::Message;

/// Longest profile asked for (Go refuses a profile longer than the server's write timeout).
const MAX_SECONDS: u64 = 600;

/// The profiling routes.
pub fn routes() -> axum::Router {
    axum::Router::new()
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof/profile", get(|uri: Uri| profile(uri)))
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "/debug/pprof/\n\nprofile: CPU profile (?seconds=N, default 30)\n",
    )
        .into_response()
}

fn seconds(uri: &Uri) -> Result<u64, String> {
    let value = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("seconds="));
    match value {
        None => Ok(30),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 && n <= MAX_SECONDS => Ok(n),
            _ => Err(format!("invalid value for seconds: {v:?}")),
        },
    }
}

async fn profile(uri: Uri) -> Response {
    let secs = match seconds(&uri) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(100)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
    {
        Ok(g) => g,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Could not enable CPU profiling: {e}\n"),
            )
                .into_response()
        }
    };
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    let encoded = tokio::task::spawn_blocking(move || {
        let report = guard.report().build().map_err(|e| e.to_string())?;
        let profile = report.pprof().map_err(|e| e.to_string())?;
        Ok::<_, String>(profile.encode_to_vec())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match encoded {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_length_is_checked() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(seconds(&u("/debug/pprof/profile")), Ok(30));
        assert_eq!(seconds(&u("/debug/pprof/profile?seconds=2")), Ok(2));
        assert!(seconds(&u("/debug/pprof/profile?seconds=0")).is_err());
        assert!(seconds(&u("/debug/pprof/profile?seconds=x")).is_err());
    }
}
