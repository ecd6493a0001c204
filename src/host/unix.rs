//! The transport of `--agent unix:PATH`: one HTTP/1.1 request per connection to the agent's
//! unix socket listener (reqwest has no unix sockets). Only the bytes on the wire live here;
//! [`crate::host::client`] builds the requests and reads the answers as for TCP.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;

/// Sends one request to the socket at `path`; returns the status and at most `max` bytes of
/// the body. `Err` is what failed and whether it was the connection (the agent did not see
/// the request).
pub async fn send(
    path: &Path,
    request: hyper::Request<Body>,
    limit: Duration,
    max: usize,
) -> Result<(u16, Vec<u8>), (String, bool)> {
    let stream = match tokio::time::timeout(
        crate::outbound::CONNECT_TIMEOUT,
        tokio::net::UnixStream::connect(path),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err((format!("cannot connect to {}: {e}", path.display()), true)),
        Err(_) => return Err((format!("connecting to {} timed out", path.display()), true)),
    };
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| (format!("handshake: {e}"), true))?;
        let driver = tokio::spawn(conn);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| (e.to_string(), false))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut out = Vec::new();
        use hyper::body::Body as _;
        while let Some(frame) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame.map_err(|e| (e.to_string(), false))?;
            if let Ok(data) = frame.into_data() {
                let room = max.saturating_sub(out.len());
                out.extend_from_slice(&data[..data.len().min(room)]);
                if room < data.len() {
                    break;
                }
            }
        }
        driver.abort();
        Ok((status, out))
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(r) => r,
        Err(_) => Err((
            format!("no complete answer within {} s", limit.as_secs()),
            false,
        )),
    }
}
