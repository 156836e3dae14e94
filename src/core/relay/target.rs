//! The relay's resolver: every delivery connects only to addresses `policy::callback` allows,
//! checked on each resolved address, so a name that later resolves inside (DNS rebinding) is
//! never reached.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

pub use crate::policy::callback::Policy;

/// A resolver for the delivery client that refuses names resolving to any address the policy
/// forbids: checked at connect time, every delivery.
#[derive(Clone)]
pub struct CheckedResolver {
    /// The policy.
    pub policy: Policy,
}

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        let policy = self.policy;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addrs.is_empty() || addrs.iter().any(|a| !policy.allows(a.ip())) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{} resolves to an address webhooks may not reach", name.as_str()),
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}
