//! What operators read of a member: `/metrics` (Prometheus), the health checks (`/health`,
//! `/livez`, `/readyz`), and CPU profiles (`/debug/pprof`).

pub mod health;
pub mod metrics;
pub mod pprof;

pub use metrics::{routes, traces, ObserveGrpc};
