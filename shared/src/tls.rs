//! TLS for every outbound HTTP client: rustls with the ring provider (a C compiler is all it
//! needs: no OpenSSL, no cmake), the system's roots through rustls' platform verifier. Merchant
//! webhook endpoints are https in production, and so may be the services' own URLs.
//!
//! reqwest is built without a default provider, so a client must not be built before one is
//! installed: [`client_builder`] installs it first, and every client of the workspace starts
//! there.

/// Installs ring as the process's rustls provider, once; later calls change nothing.
pub fn install_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // rustls deprecates ring's provider for lacking post-quantum key exchange; aws-lc-rs has
        // it but needs cmake and a long C build on every fresh machine. Classical ECDHE is what
        // webhook receivers offer today: a trade-off, noted in the README.
        #[allow(deprecated)]
        let provider = rustls::crypto::ring::default_provider();
        // Err only when a provider is installed already, which is what this ensures.
        let _ = provider.install_default();
    });
}

/// `reqwest::Client::builder()`, with the TLS provider installed.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto();
    reqwest::Client::builder()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_builds_and_takes_https_urls() {
        let client = super::client_builder().build();
        assert!(client.is_ok());
        let request = client.ok().map(|c| c.get("https://example.com/").build());
        assert!(matches!(request, Some(Ok(_))));
    }
}
