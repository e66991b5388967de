//! The gateway's stream limit: each call holds a place from the moment it starts until its
//! response body ends (a watch's or a keep-alive's body lasts as long as the stream), so the
//! gateway, like etcd's (one gRPC client of the server), never runs more calls at once than
//! --max-concurrent-streams allows; further calls wait.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Runs the call once a place is free and keeps the place with its response body.
pub async fn hold_stream(
    State(places): State<Arc<Semaphore>>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(place) = places.acquire_owned().await else {
        // The semaphore is never closed.
        return next.run(req).await;
    };
    next.run(req).await.map(|body| {
        Body::new(Holding {
            body,
            _place: place,
        })
    })
}

pin_project_lite::pin_project! {
    /// A body that gives its place back when it is dropped (finished or abandoned).
    struct Holding {
        #[pin]
        body: Body,
        _place: OwnedSemaphorePermit,
    }
}

impl http_body::Body for Holding {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
