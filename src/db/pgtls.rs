//! TLS to PostgreSQL with libpq's `sslmode` semantics, and the connection
//! string parsing that takes `sslmode` and `sslrootcert` out of it (so that
//! tokio-postgres, which knows only disable/prefer/require, never sees them).
//!
//! | sslmode       | tries TLS | falls back to plain | verifies the chain | verifies the host |
//! |---------------|-----------|---------------------|--------------------|-------------------|
//! | `disable`     | no        | —                   | —                  | —                 |
//! | `allow`       | after plain fails | (plain first) | no               | no                |
//! | `prefer`      | yes       | when TLS fails      | only with a root file | no             |
//! | `require`     | yes       | no                  | only with a root file | no             |
//! | `verify-ca`   | yes       | no                  | yes                | no                |
//! | `verify-full` | yes       | no                  | yes                | yes               |
//!
//! "A root file" is `sslrootcert=<path>`, or `~/.postgresql/root.crt` when
//! it exists (as in libpq). `verify-ca`/`verify-full` without either use the
//! system's roots (Mozilla's list, webpki-roots); `sslrootcert=system` asks for
//! them explicitly and, as in libpq, then needs `verify-full`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The modes that never fall back to an unencrypted session.
    pub fn needs_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// Where the trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The system's (Mozilla's) roots.
    System,
}

/// A connection string with the TLS settings taken out.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// What tokio-postgres parses (no `sslmode`, no `sslrootcert`).
    pub rest: String,
    pub mode: SslMode,
    /// `sslrootcert` as given (None when absent).
    pub rootcert: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "unknown sslmode {0:?} (use disable, allow, prefer, require, verify-ca or verify-full)"
    )]
    Mode(String),
    #[error("sslrootcert=system needs sslmode=verify-full (system roots vouch for names, so the name must be checked), not {0}")]
    SystemRootsWeakMode(&'static str),
    #[error("cannot read sslrootcert {path}: {reason}")]
    RootFile { path: String, reason: String },
    #[error("sslrootcert {0} holds no PEM certificate")]
    RootEmpty(String),
    #[error("unterminated quoted value in the connection string")]
    Quote,
    #[error("missing \"=\" after {0:?} in the connection string")]
    MissingEquals(String),
    #[error("TLS setup: {0}")]
    Setup(String),
}

impl ConnSpec {
    /// Splits a libpq URL (`postgresql://…?sslmode=…`) or key/value string.
    pub fn parse(conninfo: &str) -> Result<ConnSpec, SpecError> {
        let (rest, params) =
            if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
                split_url(conninfo)
            } else {
                split_keywords(conninfo)?
            };
        let mut mode = SslMode::Prefer;
        let mut rootcert = None;
        for (k, v) in params {
            match k.as_str() {
                "sslmode" => mode = SslMode::parse(&v).ok_or(SpecError::Mode(v))?,
                _ => rootcert = Some(v),
            }
        }
        if rootcert.as_deref() == Some("system") && mode != SslMode::VerifyFull {
            return Err(SpecError::SystemRootsWeakMode(mode.name()));
        }
        Ok(ConnSpec {
            rest,
            mode,
            rootcert,
        })
    }

    /// The roots to verify against, if any: libpq verifies whenever a root
    /// file is there (even at `prefer`/`require`), and verify-* always.
    pub fn roots(&self) -> Option<Roots> {
        match self.rootcert.as_deref() {
            Some("system") => return Some(Roots::System),
            Some(p) if !p.is_empty() => return Some(Roots::File(PathBuf::from(p))),
            _ => {}
        }
        let default = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".postgresql").join("root.crt"))
            .filter(|p| p.is_file());
        match (default, self.mode) {
            (Some(p), _) => Some(Roots::File(p)),
            (None, SslMode::VerifyCa | SslMode::VerifyFull) => Some(Roots::System),
            (None, _) => None,
        }
    }
}

const TLS_KEYS: [&str; 2] = ["sslmode", "sslrootcert"];

/// URL form: the TLS query parameters out, every other one kept as written.
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut taken = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k);
        if TLS_KEYS.contains(&key.as_str()) {
            taken.push((key, percent_decode(v)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (rest, taken)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Key/value form (libpq's rules: `key = value`, values in single quotes
/// with backslash escapes): the TLS pairs out, the others kept verbatim.
fn split_keywords(s: &str) -> Result<(String, Vec<(String, String)>), SpecError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut kept: Vec<&str> = Vec::new();
    let mut taken = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        skip_ws(&mut i);
        if i >= b.len() || b[i] != b'=' {
            return Err(SpecError::MissingEquals(key.to_string()));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(SpecError::Quote),
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
        }
        if TLS_KEYS.contains(&key) {
            taken.push((
                key.to_string(),
                String::from_utf8_lossy(&value).into_owned(),
            ));
        } else {
            kept.push(&s[start..i]);
        }
    }
    Ok((kept.join(" "), taken))
}

/// What happened in the TLS handshake of one connection attempt: whether it
/// started and the error it ended with (to tell TLS failures from others).
#[derive(Debug, Default)]
pub struct Handshake {
    pub started: bool,
    pub error: Option<rustls::Error>,
    pub other: Option<String>,
}

/// The connector for one attempt: a rustls client configured for the mode,
/// recording its handshake in `seen`.
#[derive(Clone)]
pub struct Tls {
    inner: MakeRustlsConnect,
    pub seen: Arc<Mutex<Handshake>>,
    /// Check the certificate's name against the host (verify-full).
    check_name: bool,
}

impl Tls {
    /// `roots` None: encrypt without verifying anything (libpq's require
    /// without a root file).
    pub fn new(roots: Option<&Roots>, check_name: bool) -> Result<Tls, SpecError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| SpecError::Setup(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            None => Arc::new(EncryptOnly(provider)),
            Some(r) => {
                let store = Arc::new(root_store(r)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(store, provider)
                    .build()
                    .map_err(|e| SpecError::Setup(e.to_string()))?;
                Arc::new(Verify { webpki, check_name })
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Tls {
            inner: MakeRustlsConnect::new(config),
            seen: Arc::default(),
            check_name,
        })
    }
}

fn root_store(roots: &Roots) -> Result<RootCertStore, SpecError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::System => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Roots::File(p) => {
            let shown = p.display().to_string();
            let bytes = std::fs::read(p).map_err(|e| SpecError::RootFile {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
            for cert in CertificateDer::pem_slice_iter(&bytes) {
                let cert = cert.map_err(|e| SpecError::RootFile {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
                store.add(cert).map_err(|e| SpecError::RootFile {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            }
            if store.is_empty() {
                return Err(SpecError::RootEmpty(shown));
            }
        }
    }
    Ok(store)
}

impl<S> MakeTlsConnect<S> for Tls
where
    MakeRustlsConnect: MakeTlsConnect<S>,
    <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect: TlsConnect<S, Error = std::io::Error>,
    <<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect as TlsConnect<S>>::Future: Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = Watched<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>;
    type Error = <MakeRustlsConnect as MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        // A unix socket path or an odd host is no TLS server name; when the
        // name is not checked it only goes into SNI.
        let name = if self.check_name || ServerName::try_from(domain).is_ok() {
            domain
        } else {
            "localhost"
        };
        let inner = MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, name)?;
        Ok(Watched {
            inner,
            seen: Arc::clone(&self.seen),
        })
    }
}

/// A TLS connect that records how its handshake went.
pub struct Watched<T> {
    inner: T,
    seen: Arc<Mutex<Handshake>>,
}

impl<S, T> TlsConnect<S> for Watched<T>
where
    T: TlsConnect<S, Error = std::io::Error>,
    T::Future: Send + 'static,
{
    type Stream = T::Stream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<T::Stream, std::io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        if let Ok(mut s) = self.seen.lock() {
            s.started = true;
        }
        let seen = self.seen;
        let fut = self.inner.connect(stream);
        Box::pin(async move {
            let r = fut.await;
            if let Err(e) = &r {
                if let Ok(mut s) = seen.lock() {
                    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(t) => s.error = Some(t.clone()),
                        None => s.other = Some(e.to_string()),
                    }
                }
            }
            r
        })
    }
}

/// Chain to a trusted root; the host name only with verify-full.
#[derive(Debug)]
struct Verify {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // The chain is checked before the name: a name error means the
            // chain was good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Accepts any server certificate but still checks the handshake signatures,
/// which is what libpq's `sslmode=require` does. The key is read from the
/// certificate with a parser that also takes X.509 v1 certificates (which
/// webpki refuses), as OpenSSL does for libpq.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

/// The certificate's public key (SubjectPublicKeyInfo, DER).
fn public_key(cert: &CertificateDer<'_>) -> Result<Vec<u8>, rustls::Error> {
    use x509_cert::der::{Decode, Encode};
    let bad = || rustls::Error::InvalidCertificate(CertificateError::BadEncoding);
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).map_err(|_| bad())?;
    cert.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| bad())
}

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = public_key(cert)?;
        let spki = SubjectPublicKeyInfoDer::from(spki.as_slice());
        let key = webpki::RawPublicKeyEntity::try_from(&spki)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let algs = self.0.signature_verification_algorithms;
        // TLS 1.2 names the hash, not the key type: try each candidate.
        let candidates = algs
            .mapping
            .iter()
            .filter(|(scheme, _)| *scheme == dss.scheme)
            .flat_map(|(_, algs)| algs.iter());
        for alg in candidates {
            if key.verify_signature(*alg, message, dss.signature()).is_ok() {
                return Ok(HandshakeSignatureValid::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let spki = public_key(cert)?;
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(spki.as_slice()),
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_form_loses_only_the_tls_keys() {
        let s = ConnSpec::parse(
            "host=db.example port=5432 sslmode = verify-full sslrootcert='/etc/ca dir/ca.pem' user=me password='a b\\'c'",
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.rootcert.as_deref(), Some("/etc/ca dir/ca.pem"));
        assert_eq!(
            s.rest,
            "host=db.example port=5432 user=me password='a b\\'c'"
        );
        let cfg: tokio_postgres::Config = s.rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn url_form_loses_only_the_tls_parameters() {
        let s = ConnSpec::parse(
            "postgresql://me:pw@db.example:5432/trips?sslmode=verify-ca&application_name=x&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.rootcert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(
            s.rest,
            "postgresql://me:pw@db.example:5432/trips?application_name=x"
        );
        let plain = ConnSpec::parse("postgres://h/db").unwrap();
        assert_eq!(plain.mode, SslMode::Prefer);
        assert_eq!(plain.rest, "postgres://h/db");
    }

    #[test]
    fn bad_settings_are_refused_with_the_reason() {
        assert!(matches!(
            ConnSpec::parse("host=h sslmode=verify"),
            Err(SpecError::Mode(_))
        ));
        assert!(matches!(
            ConnSpec::parse("host=h sslmode=require sslrootcert=system"),
            Err(SpecError::SystemRootsWeakMode("require"))
        ));
        assert!(matches!(
            ConnSpec::parse("host=h sslmode='verify-full"),
            Err(SpecError::Quote)
        ));
    }
}
