//! The manager's user view on the proxy listener (`server.public_manager`), for
//! operators who keep the admin port private: the same pages and sessions as on
//! the admin listener, with every admin page and route refused.

use super::Weir;
use bytes::Bytes;
use pingora_core::apps::ReusedHttpStream;
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;
use weir_admin::manager::{ManagerReply, ManagerRequest};

/// Forms are small: a sign-in key or nothing (the user view has no other writes).
const MAX_FORM: usize = 64 * 1024;

impl Weir {
    pub(super) async fn manager_page(
        &self,
        mut session: ServerSession,
    ) -> Option<ReusedHttpStream> {
        let body = read_form(&mut session).await?;
        // Behind a load balancer, the address it vouches for is the one slowed.
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = &self.state.snapshot().trusted_proxies;
        let client =
            weir_filters::client_addr::client_ip(peer, &session.req_header().headers, trusted);
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let req =
            ManagerRequest::from_head(session.req_header(), &body, true, client).with_tls(tls);
        let response = match self.manager.serve(&req).await {
            ManagerReply::Page(r) => r,
            // Exports are served on the admin listener only.
            ManagerReply::Export(_) => return None,
        };
        let (parts, body) = response.into_parts();
        let header: ResponseHeader = parts.into();
        session.write_response_header(Box::new(header)).await.ok()?;
        session
            .write_response_body(Bytes::from(body), true)
            .await
            .ok()?;
        super::reusable(session).await
    }
}

/// The request body, or `None` (the connection closed) when it is too large or
/// cannot be read.
async fn read_form(session: &mut ServerSession) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_FORM {
            return None;
        }
    }
    Some(body)
}
