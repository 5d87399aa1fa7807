//! HTTP to loopback services (the POS handler, `tillsync-edge status`), through reqwest built
//! without TLS: plain `http://` only, which keeps a TLS stack off the Pi.

use std::sync::OnceLock;

/// An `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url(reqwest::Url);

impl Url {
    pub fn parse(url: &str) -> Result<Url, UrlError> {
        let u = reqwest::Url::parse(url).map_err(|why| UrlError::Invalid { url: url.to_string(), why })?;
        if u.scheme() != "http" {
            return Err(UrlError::NotHttp { url: url.to_string() });
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::NoHost { url: url.to_string() });
        }
        Ok(Url(u))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Why a handler or status URL is refused. A setting's error: its text is the whole story
/// (the parser's reason is part of the message, not a `#[source]`).
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("{url:?}: {why}")]
    Invalid { url: String, why: url::ParseError },
    #[error("{url:?}: only http:// URLs are supported")]
    NotHttp { url: String },
    #[error("{url:?}: missing host")]
    NoHost { url: String },
}

fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

/// Sends one request with a JSON body; returns the status code and the body.
pub async fn request(method: &str, url: &Url, body: &[u8]) -> Result<(u16, Vec<u8>), reqwest::Error> {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let resp = client()
        .request(method, url.0.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.bytes().await?.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:9000/pos/commands").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9000/pos/commands");
        assert!(Url::parse("http://localhost").is_ok());
        assert!(Url::parse("https://x/").is_err());
        assert!(Url::parse("not a url").is_err());
    }
}
