//! TLS for the chunk-transfer endpoint: libp2p-tls certificates and verification, with
//! AES-GCM preferred over ChaCha20-Poly1305.
//!
//! `libp2p_tls::make_{client,server}_config` list ChaCha20-Poly1305 first, and rustls
//! keeps the client's order, so every chunk connection used it. On x86 with AES-NI that
//! was 9 % of a daemon's CPU samples in the 8-node emulated cold start (`perf`, session
//! 5), where AES-GCM costs a fraction of it. The certificate (a self-signed one carrying
//! the libp2p key, per the libp2p TLS spec) comes from libp2p-tls's own config; the
//! checks below are libp2p-tls's verifier, restated because that type is private.

use std::sync::Arc;

use libp2p_identity::{Keypair, PeerId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::NetError;

/// AES first: hardware-accelerated on the machines shoal targets. ChaCha20 stays for a
/// peer without AES (libp2p-tls's configs offer all three).
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![
        TLS13_AES_128_GCM_SHA256,
        TLS13_AES_256_GCM_SHA384,
        TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

fn setup(e: impl std::fmt::Display) -> NetError {
    NetError::Setup(e.to_string())
}

/// The server side: presents this node's certificate, requires and checks the client's.
pub fn server_config(keypair: &Keypair) -> Result<rustls::ServerConfig, NetError> {
    let libp2p = libp2p_tls::make_server_config(keypair).map_err(setup)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .with_client_cert_verifier(Arc::new(PeerVerifier { expected: None }))
        .with_cert_resolver(libp2p.cert_resolver.clone());
    config.alpn_protocols = libp2p.alpn_protocols.clone();
    Ok(config)
}

/// The client side: with `expected` set, the handshake fails unless the server is that
/// PeerId.
pub fn client_config(
    keypair: &Keypair,
    expected: Option<PeerId>,
) -> Result<rustls::ClientConfig, NetError> {
    let libp2p = libp2p_tls::make_client_config(keypair, expected).map_err(setup)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(setup)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier { expected }))
        .with_client_cert_resolver(libp2p.client_auth_cert_resolver.clone());
    config.alpn_protocols = libp2p.alpn_protocols.clone();
    Ok(config)
}

/// libp2p's certificate rules: exactly one self-signed certificate whose extension is
/// signed by the peer's libp2p key, handshake signatures made with the certificate's key,
/// and (client side, when known) the expected PeerId. Web PKI does not apply.
#[derive(Debug)]
struct PeerVerifier {
    expected: Option<PeerId>,
}

impl PeerVerifier {
    fn presented_peer(
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
    ) -> Result<PeerId, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "libp2p-tls requires exactly one certificate".into(),
            ));
        }
        let cert = libp2p_tls::certificate::parse(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        Ok(cert.peer_id())
    }

    fn tls13_signature(
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
        message: &[u8],
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        libp2p_tls::certificate::parse(cert)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?
            .verify_signature(dss.scheme, message, dss.signature())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature))?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn schemes() -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

/// TLS 1.2 is never negotiated (the configs allow 1.3 only).
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _server_name: &ServerName,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let peer = Self::presented_peer(end_entity, intermediates)?;
        if self.expected.is_some_and(|expected| expected != peer) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::tls13_signature(cert, dss, message)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer,
        intermediates: &[CertificateDer],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::presented_peer(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::tls13_signature(cert, dss, message)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a TLS handshake in memory; the negotiated suite, or the first error.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<rustls::CipherSuite, rustls::Error> {
        let name = ServerName::try_from("peer").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(c.negotiated_cipher_suite().unwrap().suite());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn peers_agree_on_aes_gcm_and_check_the_peer_id() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let suite = handshake(
            client_config(&a, Some(b.public().to_peer_id())).unwrap(),
            server_config(&b).unwrap(),
        );
        assert_eq!(
            suite.unwrap(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );

        // An endpoint still on libp2p-tls's own configs interoperates (rolling upgrades).
        let suite = handshake(
            libp2p_tls::make_client_config(&a, None).unwrap(),
            server_config(&b).unwrap(),
        );
        assert_eq!(
            suite.unwrap(),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        let suite = handshake(
            client_config(&a, None).unwrap(),
            libp2p_tls::make_server_config(&b).unwrap(),
        );
        assert_eq!(
            suite.unwrap(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );

        // Expecting someone else fails the handshake.
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let refused = handshake(
            client_config(&a, Some(other)).unwrap(),
            server_config(&b).unwrap(),
        );
        assert!(
            matches!(
                refused,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure
                ))
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn a_certificate_without_the_libp2p_extension_is_refused() {
        // A plain self-signed certificate, as any TLS client could present.
        let plain = rcgen::generate_simple_self_signed(vec!["peer".into()]).unwrap();
        let der = CertificateDer::from(plain.cert.der().to_vec());
        let err = PeerVerifier::presented_peer(&der, &[]).unwrap_err();
        assert_eq!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
        );
        // A valid libp2p certificate with an intermediate is refused too.
        let (cert, _) = libp2p_tls::certificate::generate(&Keypair::generate_ed25519()).unwrap();
        assert!(PeerVerifier::presented_peer(&cert, &[der]).is_err());
        assert!(PeerVerifier::presented_peer(&cert, &[]).is_ok());
    }
}
