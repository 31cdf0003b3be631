//! TLS for the HTTPS listeners: PEM certificates and keys, SNI selection and
//! hot reload.
//!
//! [`CertStore`] loads every configured certificate/key pair, checks that each
//! key belongs to its certificate, and serves them to rustls as a
//! [`ResolvesServerCert`]. The loaded set lives behind an [`ArcSwap`], so
//! [`CertStore::reload`] (called by the file watcher or on SIGHUP) swaps in
//! renewed certificates for new handshakes without a restart and without
//! touching established connections. A broken renewal is refused and the
//! running certificates stay.
//!
//! Certificate selection: the client's SNI is matched against the configured
//! names (exact names first, then `*.example.com` wildcards covering exactly
//! one label, case-insensitively); no SNI or no match gets the default pair.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};

use crate::config::CertFiles;

/// PEM files larger than this are refused: a full chain is a few KiB, and the
/// limit keeps a mistyped path (a log file, a disk image) from eating memory.
const MAX_PEM_BYTES: u64 = 4 << 20;

/// ALPN protocols offered, in server preference order.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why certificates could not be loaded. File-related messages start with
/// the file's path.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be opened or read.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The path exists but is not a regular file (directory, FIFO, device).
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file exceeds [`MAX_PEM_BYTES`].
    #[error("{}: larger than {} MiB, not a PEM certificate or key", path.display(), MAX_PEM_BYTES >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file has a malformed PEM section.
    #[error("{}: invalid PEM: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        detail: String,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{}: no certificate found", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The leaf certificate is not valid X.509.
    #[error("{}: invalid certificate: {error}", path.display())]
    InvalidCertificate {
        /// The certificate file.
        path: PathBuf,
        /// rustls' complaint.
        error: rustls::Error,
    },
    /// The key file holds no private key in a supported PEM encoding.
    #[error("{}: no private key found (expected PKCS#8, PKCS#1 or SEC1 PEM)", path.display())]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key file holds only a passphrase-protected key.
    #[error("{}: encrypted private keys are not supported (store it unencrypted, readable only by gatekeeper)", path.display())]
    EncryptedKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key parsed as PEM but is not a key type/size the ring provider can sign with.
    #[error("{}: unsupported private key: {error}", path.display())]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// rustls' complaint.
        error: rustls::Error,
    },
    /// The key is not the one the leaf certificate was issued for.
    #[error("{}: private key does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A configured SNI name is not usable.
    #[error("TLS server name {name:?}: {reason}")]
    InvalidName {
        /// The name as configured.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same SNI name is configured for two certificates.
    #[error("TLS server name {name:?} is configured for both {} and {}", first.display(), second.display())]
    DuplicateName {
        /// The name, normalized.
        name: String,
        /// The first certificate file claiming it.
        first: PathBuf,
        /// The second certificate file claiming it.
        second: PathBuf,
    },
    /// More than one pair has no names, so the default is ambiguous.
    #[error("more than one default TLS certificate (without names): {} and {}", first.display(), second.display())]
    MultipleDefaults {
        /// The first nameless certificate file.
        first: PathBuf,
        /// The second nameless certificate file.
        second: PathBuf,
    },
    /// The spec list is empty.
    #[error("no TLS certificate configured")]
    NoCertificates,
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The ring provider, built explicitly so that nothing depends on which
/// provider (if any) the process installed as its default.
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// One immutable, loaded set of certificates; reloads replace it whole.
struct Certs {
    default: Arc<CertifiedKey>,
    /// Exact names, lowercase, without trailing dot.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certs {
    /// The pair for a client's SNI (already lowercased by rustls, but cheap to be sure).
    fn lookup(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = sni else { return &self.default };
        let name = name.strip_suffix('.').unwrap_or(name);
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        if let Some(found) = self.exact.get(name) {
            return found;
        }
        // A wildcard covers exactly one label (RFC 6125 6.4.3): `*.example.com`
        // matches `a.example.com`, not `example.com` nor `a.b.example.com`.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(found) = self.wildcard.get(parent) {
                return found;
            }
        }
        &self.default
    }

    /// Leaf certificates in a stable order, to tell whether a reload changed anything.
    fn leaves(&self) -> Vec<&[u8]> {
        let mut leaves: Vec<&[u8]> = std::iter::once(&self.default)
            .chain(self.exact.values())
            .chain(self.wildcard.values())
            .filter_map(|ck| ck.cert.first().map(|c| c.as_ref()))
            .collect();
        leaves.sort_unstable();
        leaves.dedup();
        leaves
    }
}

/// The certificates, swappable at run time.
///
/// Implements [`ResolvesServerCert`]: give it to rustls via [`server_config`].
pub struct CertStore {
    specs: Vec<CertFiles>,
    certs: ArcSwap<Certs>,
    /// Serializes reloads, so a slow reload cannot overwrite a newer one.
    reload_lock: Mutex<()>,
}

impl CertStore {
    /// Loads and checks every pair; fails on the first bad file or name.
    pub fn load(specs: &[CertFiles]) -> Result<Arc<CertStore>, TlsError> {
        let certs = build(specs)?;
        Ok(Arc::new(CertStore {
            specs: specs.to_vec(),
            certs: ArcSwap::from_pointee(certs),
            reload_lock: Mutex::new(()),
        }))
    }

    /// Re-reads every file; on any error keeps the current certificates and
    /// returns the error (also logged, naming the file).
    ///
    /// Blocking file I/O (a few small files): call it from a blocking context
    /// or accept the short stall.
    pub fn reload(&self) -> Result<(), TlsError> {
        // A poisoned lock only means another reload panicked; the swap itself is atomic.
        let _guard = self.reload_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let new = match build(&self.specs) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!("TLS certificate reload failed, keeping the current certificates: {e}");
                return Err(e);
            }
        };
        let changed = self.certs.load().leaves() != new.leaves();
        self.certs.store(Arc::new(new));
        if changed {
            tracing::info!(certificates = self.specs.len(), "TLS certificates reloaded");
        } else {
            tracing::debug!("TLS certificates re-read, unchanged");
        }
        Ok(())
    }

    /// Every cert and key file (for the file watcher), as configured, without
    /// duplicates. Renewals usually replace these by rename or symlink swap,
    /// so watch their directories rather than the files' inodes.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = Vec::new();
        for spec in &self.specs {
            for path in [&spec.cert, &spec.key] {
                if !files.contains(path) {
                    files.push(path.clone());
                }
            }
        }
        files
    }
}

impl fmt::Debug for CertStore {
    // Paths and names only: never anything derived from key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("specs", &self.specs)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.certs.load().lookup(client_hello.server_name())))
    }
}

/// Checks specs without keeping anything (for `gatekeeper check`).
pub fn check(specs: &[CertFiles]) -> Result<(), TlsError> {
    build(specs).map(drop)
}

/// rustls `ServerConfig`: TLS 1.2 and 1.3, ring provider, ALPN `h2` then
/// `http/1.1`, certificates from `store`. Build it once and share the `Arc`:
/// reloads happen inside the store, so the config never needs rebuilding.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    // SECURITY: only TLS 1.3 and 1.2, with ring's default (AEAD, ECDHE-only) suites.
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Our order (AEAD/ECDHE preference as rustls lists it) wins over the client's.
    config.ignore_client_order = true;
    // SECURITY: stateless resumption tickets with random in-memory keys, rotated
    // every 6 hours by rustls; nothing is written to disk. The session-ID cache
    // stays as the fallback. 0-RTT stays off (max_early_data_size = 0): replayable.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

/// Loads all pairs and indexes them by name.
fn build(specs: &[CertFiles]) -> Result<Certs, TlsError> {
    let provider = provider();
    let mut default: Option<(&Path, Arc<CertifiedKey>)> = None;
    let mut first: Option<Arc<CertifiedKey>> = None;
    let mut exact: HashMap<String, (&Path, Arc<CertifiedKey>)> = HashMap::new();
    let mut wildcard: HashMap<String, (&Path, Arc<CertifiedKey>)> = HashMap::new();

    for spec in specs {
        // Names first: a typo in the config is reported before any file is read.
        let names = spec
            .names
            .iter()
            .map(|n| parse_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let key = load_pair(spec, &provider)?;
        first.get_or_insert_with(|| Arc::clone(&key));
        if names.is_empty() {
            if let Some((other, _)) = &default {
                return Err(TlsError::MultipleDefaults {
                    first: other.to_path_buf(),
                    second: spec.cert.clone(),
                });
            }
            default = Some((&spec.cert, Arc::clone(&key)));
        }
        for name in names {
            let (map, label, prefix) = match name {
                Name::Exact(n) => (&mut exact, n, ""),
                Name::Wildcard(parent) => (&mut wildcard, parent, "*."),
            };
            match map.entry(label) {
                Entry::Vacant(slot) => {
                    slot.insert((&spec.cert, Arc::clone(&key)));
                }
                // The same name twice in one spec is harmless.
                Entry::Occupied(slot) if Arc::ptr_eq(&slot.get().1, &key) => {}
                Entry::Occupied(slot) => {
                    return Err(TlsError::DuplicateName {
                        name: format!("{prefix}{}", slot.key()),
                        first: slot.get().0.to_path_buf(),
                        second: spec.cert.clone(),
                    });
                }
            }
        }
    }

    let default = match (default, first) {
        (Some((_, key)), _) => key,
        // No nameless pair: the first one configured doubles as the default.
        (None, Some(first)) => first,
        (None, None) => return Err(TlsError::NoCertificates),
    };
    let strip = |m: HashMap<String, (&Path, Arc<CertifiedKey>)>| m.into_iter().map(|(n, (_, k))| (n, k)).collect();
    Ok(Certs {
        default,
        exact: strip(exact),
        wildcard: strip(wildcard),
    })
}

/// A configured SNI name, normalized.
#[derive(Debug, PartialEq, Eq)]
enum Name {
    Exact(String),
    /// The part after `*.`.
    Wildcard(String),
}

fn parse_name(raw: &str) -> Result<Name, TlsError> {
    let invalid = |reason| TlsError::InvalidName {
        name: raw.to_owned(),
        reason,
    };
    let lower = raw.trim().to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    let (wild, host) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if host.is_empty() {
        return Err(invalid("empty name"));
    }
    if host.contains('*') {
        return Err(invalid(
            "a wildcard must be the whole leftmost label, as in *.example.com",
        ));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Err(invalid(
            "clients send no SNI for IP addresses; serve this certificate as the default instead",
        ));
    }
    if host.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(invalid("each dot-separated label must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "only letters, digits, '-' and '_' are allowed (use punycode for IDNs)",
            ));
        }
    }
    Ok(if wild {
        Name::Wildcard(host.to_owned())
    } else {
        Name::Exact(host.to_owned())
    })
}

/// Reads one pair and checks that the key belongs to the leaf certificate.
fn load_pair(spec: &CertFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read_pem_file(&spec.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&spec.cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: spec.cert.clone(),
        });
    }

    let key_pem = read_pem_file(&spec.key)?;
    #[cfg(unix)]
    warn_if_world_readable(&spec.key);
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) if is_encrypted_key(&key_pem) => {
            return Err(TlsError::EncryptedKey { path: spec.key.clone() })
        }
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey { path: spec.key.clone() }),
        Err(e) => return Err(pem_error(&spec.key, e)),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|error| TlsError::UnsupportedKey {
            path: spec.key.clone(),
            error,
        })?;

    let certified = CertifiedKey::new(chain, signing_key);
    // SECURITY: refuse a key that does not belong to the leaf; otherwise every
    // handshake would fail (or, with a reload, the outage would start silently).
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                key: spec.key.clone(),
                cert: spec.cert.clone(),
            })
        }
        // The signer cannot report its public key (never the case with ring);
        // rustls' own loader accepts this too.
        Err(rustls::Error::InconsistentKeys(_)) => {}
        // The leaf could not be parsed as X.509.
        Err(error) => {
            return Err(TlsError::InvalidCertificate {
                path: spec.cert.clone(),
                error,
            })
        }
    }
    Ok(Arc::new(certified))
}

/// Reads a whole PEM file, refusing non-regular and oversized files.
fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let io_error = |error| TlsError::Io {
        path: path.to_path_buf(),
        error,
    };
    // metadata() follows symlinks, like certbot's live/ links; a FIFO or device
    // would block or never end, so only regular files are read.
    if !std::fs::metadata(path).map_err(io_error)?.is_file() {
        return Err(TlsError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut buf = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut buf))
        .map_err(io_error)?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(buf)
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(error) => TlsError::Io {
            path: path.to_path_buf(),
            error,
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

/// PKCS#8 `ENCRYPTED PRIVATE KEY` or legacy OpenSSL `Proc-Type: 4,ENCRYPTED`.
fn is_encrypted_key(pem: &[u8]) -> bool {
    let contains = |needle: &[u8]| pem.windows(needle.len()).any(|w| w == needle);
    contains(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(b"Proc-Type: 4,ENCRYPTED")
}

/// SECURITY: a private key readable by every local user is worth a warning,
/// not a refusal (some deployments rely on directory permissions instead).
#[cfg(unix)]
fn warn_if_world_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(path = %path.display(), "TLS private key is readable by all users; chmod o-r it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::process::Command;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SignatureAlgorithm};
    use rustls::client::ClientConnection;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
    use tempfile::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::client::TlsStream;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const P256: &SignatureAlgorithm = &rcgen::PKCS_ECDSA_P256_SHA256;

    /// A throwaway CA; leaves are issued with a full chain (leaf, then CA), like certbot's fullchain.pem.
    struct Ca {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    /// An issued leaf: the chain PEM, its key PEM (PKCS#8 unless converted), and the leaf DER.
    struct Issued {
        chain: String,
        key: String,
        leaf: CertificateDer<'static>,
    }

    impl Ca {
        fn new() -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, "gatekeeper test CA");
            Ca {
                issuer: CertifiedIssuer::self_signed(params, KeyPair::generate_for(P256).unwrap()).unwrap(),
            }
        }

        fn roots(&self) -> RootCertStore {
            let mut roots = RootCertStore::empty();
            roots.add(self.issuer.der().clone()).unwrap();
            roots
        }

        fn issue(&self, names: &[&str], alg: &'static SignatureAlgorithm) -> Issued {
            self.issue_with(names, &KeyPair::generate_for(alg).unwrap())
        }

        fn issue_with(&self, names: &[&str], key: &KeyPair) -> Issued {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(key, &*self.issuer)
                .unwrap();
            Issued {
                chain: format!("{}{}", cert.pem(), self.issuer.pem()),
                key: key.serialize_pem(),
                leaf: cert.der().clone(),
            }
        }
    }

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Writes the pair as `<stem>.crt` / `<stem>.key` and returns its spec.
    fn write_pair(dir: &Path, stem: &str, names: &[&str], issued: &Issued) -> CertFiles {
        CertFiles {
            names: names.iter().map(|n| n.to_string()).collect(),
            cert: write(dir, &format!("{stem}.crt"), &issued.chain),
            key: write(dir, &format!("{stem}.key"), &issued.key),
        }
    }

    /// Replaces `path` the way certbot and most tools do: write a temp file, rename it over.
    fn replace(path: &Path, content: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Runs openssl with `args`; None (and a note) when it is not installed.
    fn openssl(args: &[&str], stdin: Option<&Path>) -> Option<String> {
        let mut cmd = Command::new("openssl");
        cmd.args(args);
        if let Some(input) = stdin {
            cmd.stdin(File::open(input).unwrap());
        }
        match cmd.output() {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                Some(String::from_utf8(out.stdout).unwrap())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eprintln!("skipped: openssl is not installed");
                None
            }
            Err(e) => panic!("openssl: {e}"),
        }
    }

    /// An echo server on loopback: every accepted TLS connection writes back what it reads.
    async fn serve(store: Arc<CertStore>) -> SocketAddr {
        let acceptor = TlsAcceptor::from(server_config(store).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = tls.read(&mut buf).await {
                        if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    struct ClientOpts {
        alpn: &'static [&'static [u8]],
        versions: &'static [&'static SupportedProtocolVersion],
        sni: bool,
    }

    const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

    const DEFAULT_CLIENT: ClientOpts = ClientOpts {
        alpn: &[b"h2", b"http/1.1"],
        versions: &[&rustls::version::TLS13, &rustls::version::TLS12],
        sni: true,
    };

    fn client_config(roots: RootCertStore, opts: &ClientOpts) -> Arc<ClientConfig> {
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(opts.versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = opts.alpn.iter().map(|p| p.to_vec()).collect();
        config.enable_sni = opts.sni;
        Arc::new(config)
    }

    async fn connect_with(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
        echo(&mut tls).await;
        tls
    }

    async fn connect(addr: SocketAddr, roots: RootCertStore, name: &str, opts: &ClientOpts) -> TlsStream<TcpStream> {
        connect_with(addr, client_config(roots, opts), name).await
    }

    /// Proves the connection carries data both ways.
    async fn echo(tls: &mut TlsStream<TcpStream>) {
        tls.write_all(b"ping").await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    fn conn(tls: &TlsStream<TcpStream>) -> &ClientConnection {
        tls.get_ref().1
    }

    fn leaf(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
        conn(tls).peer_certificates().unwrap()[0].clone().into_owned()
    }

    fn single(dir: &Path, issued: &Issued) -> Arc<CertStore> {
        CertStore::load(&[write_pair(dir, "site", &[], issued)]).unwrap()
    }

    // ---- loading: key formats ----

    #[tokio::test]
    async fn pkcs8_keys_of_every_ring_type_load_and_serve() {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        for alg in [P256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let issued = ca.issue(&["site.test"], alg);
            assert!(issued.key.starts_with("-----BEGIN PRIVATE KEY-----"));
            let addr = serve(single(dir.path(), &issued)).await;
            let tls = connect(addr, ca.roots(), "site.test", &DEFAULT_CLIENT).await;
            assert_eq!(leaf(&tls), issued.leaf);
            // The full chain is sent: leaf, then the CA.
            assert_eq!(conn(&tls).peer_certificates().unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn rsa_keys_in_pkcs1_and_pkcs8_load_and_serve() {
        let dir = TempDir::new().unwrap();
        let Some(pkcs1) = openssl(&["genrsa", "-traditional", "2048"], None) else {
            return;
        };
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let pkcs1_path = write(dir.path(), "rsa1.pem", &pkcs1);
        let Some(pkcs8) = openssl(&["pkcs8", "-topk8", "-nocrypt"], Some(&pkcs1_path)) else {
            return;
        };
        let ca = Ca::new();
        let issued = ca.issue_with(
            &["rsa.test"],
            &KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap(),
        );
        for key in [&pkcs1, &pkcs8] {
            let issued = Issued {
                key: key.clone(),
                chain: issued.chain.clone(),
                leaf: issued.leaf.clone(),
            };
            let addr = serve(single(dir.path(), &issued)).await;
            for versions in [TLS13_ONLY, TLS12_ONLY] {
                let opts = ClientOpts {
                    versions,
                    ..DEFAULT_CLIENT
                };
                let tls = connect(addr, ca.roots(), "rsa.test", &opts).await;
                assert_eq!(leaf(&tls), issued.leaf);
            }
        }
    }

    #[tokio::test]
    async fn sec1_ec_key_loads_and_serves() {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        let issued = ca.issue(&["ec.test"], P256);
        let pkcs8_path = write(dir.path(), "p8.pem", &issued.key);
        let Some(sec1) = openssl(&["ec"], Some(&pkcs8_path)) else {
            return;
        };
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let issued = Issued { key: sec1, ..issued };
        let addr = serve(single(dir.path(), &issued)).await;
        let tls = connect(addr, ca.roots(), "ec.test", &DEFAULT_CLIENT).await;
        assert_eq!(leaf(&tls), issued.leaf);
    }

    #[test]
    fn cert_and_key_in_one_file() {
        let dir = TempDir::new().unwrap();
        let issued = Ca::new().issue(&["site.test"], P256);
        let both = write(dir.path(), "both.pem", &format!("{}{}", issued.key, issued.chain));
        let store = CertStore::load(&[CertFiles {
            names: vec![],
            cert: both.clone(),
            key: both.clone(),
        }])
        .unwrap();
        assert_eq!(store.files(), vec![both]);
    }

    // ---- loading: errors name the file ----

    /// Loads a pair whose cert or key file holds `cert`/`key` (None = good content) and returns the message.
    fn load_error(cert: Option<&str>, key: Option<&str>) -> (TlsError, String, CertFiles) {
        let dir = TempDir::new().unwrap();
        let issued = Ca::new().issue(&["site.test"], P256);
        let spec = CertFiles {
            names: vec![],
            cert: write(dir.path(), "fullchain.pem", cert.unwrap_or(&issued.chain)),
            key: write(dir.path(), "privkey.pem", key.unwrap_or(&issued.key)),
        };
        let err = CertStore::load(std::slice::from_ref(&spec)).unwrap_err();
        assert_eq!(
            check(std::slice::from_ref(&spec)).unwrap_err().to_string(),
            err.to_string()
        );
        let msg = err.to_string();
        (err, msg, spec)
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TempDir::new().unwrap();
        let issued = Ca::new().issue(&["site.test"], P256);
        let good = write_pair(dir.path(), "good", &[], &issued);
        let missing = dir.path().join("nope.pem");

        let spec = CertFiles {
            cert: missing.clone(),
            ..good.clone()
        };
        let err = CertStore::load(&[spec]).unwrap_err();
        assert!(matches!(&err, TlsError::Io { error, .. } if error.kind() == io::ErrorKind::NotFound));
        assert_eq!(
            err.to_string(),
            format!("{}: No such file or directory (os error 2)", missing.display())
        );

        let spec = CertFiles {
            key: missing.clone(),
            ..good
        };
        let err = CertStore::load(&[spec]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: No such file or directory (os error 2)", missing.display())
        );
    }

    #[test]
    fn empty_and_garbage_cert_files() {
        for content in ["", "hello, I am not a certificate\n", "\u{0}\u{1}\u{2}binary"] {
            let (err, msg, spec) = load_error(Some(content), None);
            assert!(matches!(err, TlsError::NoCertificate { .. }), "{content:?}: {err:?}");
            assert_eq!(msg, format!("{}: no certificate found", spec.cert.display()));
        }
        // Armor around bad base64, and around valid base64 that is not X.509.
        let (err, msg, spec) = load_error(
            Some("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            None,
        );
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        assert!(
            msg.starts_with(&format!("{}: invalid PEM: ", spec.cert.display())),
            "{msg}"
        );
        let (err, msg, spec) = load_error(
            Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            None,
        );
        assert!(matches!(err, TlsError::InvalidCertificate { .. }), "{err:?}");
        assert!(
            msg.starts_with(&format!("{}: invalid certificate: ", spec.cert.display())),
            "{msg}"
        );
        let (err, _, _) = load_error(Some("-----BEGIN CERTIFICATE-----\nAAAA\n"), None);
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
    }

    #[test]
    fn empty_and_garbage_key_files() {
        let issued = Ca::new().issue(&["x.test"], P256);
        // A certificate where the key should be (swapped paths) is "no key" too.
        for content in ["", "garbage\n", issued.chain.as_str()] {
            let (err, msg, spec) = load_error(None, Some(content));
            assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
            assert_eq!(
                msg,
                format!(
                    "{}: no private key found (expected PKCS#8, PKCS#1 or SEC1 PEM)",
                    spec.key.display()
                )
            );
        }
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let (err, msg, spec) = load_error(None, Some(encrypted));
        assert!(matches!(err, TlsError::EncryptedKey { .. }), "{err:?}");
        assert!(msg.starts_with(&format!(
            "{}: encrypted private keys are not supported",
            spec.key.display()
        )));
        // Well-formed PEM, but not a key ring can use.
        let (err, msg, spec) = load_error(
            None,
            Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        );
        assert!(matches!(err, TlsError::UnsupportedKey { .. }), "{err:?}");
        assert!(
            msg.starts_with(&format!("{}: unsupported private key: ", spec.key.display())),
            "{msg}"
        );
    }

    #[test]
    fn mismatched_key_is_refused() {
        let other = KeyPair::generate_for(P256).unwrap().serialize_pem();
        let (err, msg, spec) = load_error(None, Some(&other));
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert_eq!(
            msg,
            format!(
                "{}: private key does not match certificate {}",
                spec.key.display(),
                spec.cert.display()
            )
        );
    }

    #[test]
    fn directories_and_oversized_files_are_refused() {
        let dir = TempDir::new().unwrap();
        let issued = Ca::new().issue(&["site.test"], P256);
        let good = write_pair(dir.path(), "good", &[], &issued);
        let err = CertStore::load(&[CertFiles {
            cert: dir.path().to_path_buf(),
            ..good.clone()
        }])
        .unwrap_err();
        assert_eq!(err.to_string(), format!("{}: not a regular file", dir.path().display()));

        let big = dir.path().join("big.pem");
        File::create(&big).unwrap().set_len(MAX_PEM_BYTES + 1).unwrap();
        let err = CertStore::load(&[CertFiles {
            cert: big.clone(),
            ..good
        }])
        .unwrap_err();
        assert!(matches!(&err, TlsError::TooLarge { path } if *path == big), "{err:?}");
    }

    #[test]
    fn later_specs_are_checked_too() {
        let dir = TempDir::new().unwrap();
        let issued = Ca::new().issue(&["site.test"], P256);
        let good = write_pair(dir.path(), "good", &[], &issued);
        let bad = CertFiles {
            names: vec!["b.test".into()],
            cert: dir.path().join("b.crt"),
            key: good.key.clone(),
        };
        let err = check(&[good, bad.clone()]).unwrap_err();
        assert!(err.to_string().starts_with(&bad.cert.display().to_string()), "{err}");
    }

    // ---- names ----

    #[test]
    fn names_are_normalized_and_validated() {
        assert_eq!(parse_name("Example.COM.").unwrap(), Name::Exact("example.com".into()));
        assert_eq!(
            parse_name(" *.Example.com ").unwrap(),
            Name::Wildcard("example.com".into())
        );
        assert_eq!(
            parse_name("_dmarc-x.example").unwrap(),
            Name::Exact("_dmarc-x.example".into())
        );
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "*a.example.com",
            "**.example.com",
            "a..b",
            "ex ample.com",
            "192.0.2.1",
        ] {
            let err = parse_name(bad).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("TLS server name {bad:?}: ")),
                "{err}"
            );
        }
        assert!(parse_name(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(parse_name(&["abc"; 70].join(".")).is_err());
    }

    fn specs_for(dir: &Path, ca: &Ca, names: &[&[&str]]) -> (Vec<CertFiles>, Vec<Issued>) {
        let issued: Vec<Issued> = names
            .iter()
            .map(|n| ca.issue(if n.is_empty() { &["default.test"] } else { n }, P256))
            .collect();
        let specs = names
            .iter()
            .zip(&issued)
            .enumerate()
            .map(|(i, (n, c))| write_pair(dir, &format!("c{i}"), n, c));
        (specs.collect(), issued)
    }

    fn resolved(store: &CertStore, sni: Option<&str>) -> CertificateDer<'static> {
        store.certs.load().lookup(sni).cert[0].clone()
    }

    #[test]
    fn sni_lookup_rules() {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        let (specs, certs) = specs_for(
            dir.path(),
            &ca,
            &[
                &["a.example.com", "B.example.org"],
                &[],
                &["*.example.com"],
                &["x.y.example.com"],
            ],
        );
        let store = CertStore::load(&specs).unwrap();
        let [a, default, wild, xy] = [&certs[0].leaf, &certs[1].leaf, &certs[2].leaf, &certs[3].leaf];
        let cases: &[(Option<&str>, &CertificateDer)] = &[
            (None, default),
            (Some("a.example.com"), a),  // exact beats the wildcard
            (Some("A.Example.COM."), a), // case and trailing dot
            (Some("b.example.org"), a),
            (Some("c.example.com"), wild),
            (Some("C.EXAMPLE.COM"), wild),
            (Some("example.com"), default),     // a wildcard does not cover the apex
            (Some("q.c.example.com"), default), // nor two labels
            (Some("x.y.example.com"), xy),
            (Some("unknown.test"), default),
            (Some(""), default),
        ];
        for (sni, want) in cases {
            assert_eq!(&&resolved(&store, *sni), want, "{sni:?}");
        }
    }

    #[test]
    fn first_spec_is_default_when_all_are_named() {
        let dir = TempDir::new().unwrap();
        let (specs, certs) = specs_for(dir.path(), &Ca::new(), &[&["a.test"], &["b.test"]]);
        let store = CertStore::load(&specs).unwrap();
        assert_eq!(resolved(&store, None), certs[0].leaf);
        assert_eq!(resolved(&store, Some("zzz.test")), certs[0].leaf);
        assert_eq!(resolved(&store, Some("b.test")), certs[1].leaf);
    }

    #[test]
    fn ambiguous_configurations_are_refused() {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        let (specs, _) = specs_for(dir.path(), &ca, &[&[], &["a.test"], &[]]);
        let err = CertStore::load(&specs).unwrap_err();
        assert!(
            matches!(&err, TlsError::MultipleDefaults { first, second } if *first == specs[0].cert && *second == specs[2].cert)
        );

        let (specs, _) = specs_for(dir.path(), &ca, &[&["a.test", "*.b.test"], &["x.test", "*.B.test."]]);
        let err = CertStore::load(&specs).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "TLS server name \"*.b.test\" is configured for both {} and {}",
                specs[0].cert.display(),
                specs[1].cert.display()
            )
        );

        // Repeating a name within one spec is fine.
        let (specs, _) = specs_for(dir.path(), &ca, &[&["a.test", "A.test"]]);
        CertStore::load(&specs).unwrap();

        assert!(matches!(CertStore::load(&[]).unwrap_err(), TlsError::NoCertificates));
    }

    #[test]
    fn files_lists_every_file_once() {
        let dir = TempDir::new().unwrap();
        let (mut specs, _) = specs_for(dir.path(), &Ca::new(), &[&[], &["a.test"]]);
        specs.push(CertFiles {
            names: vec!["b.test".into()],
            ..specs[1].clone()
        });
        let store = CertStore::load(&specs).unwrap();
        assert_eq!(
            store.files(),
            vec![
                specs[0].cert.clone(),
                specs[0].key.clone(),
                specs[1].cert.clone(),
                specs[1].key.clone()
            ]
        );
        assert!(format!("{store:?}").starts_with("CertStore { specs: ["));
    }

    // ---- the server config, over real handshakes ----

    #[test]
    fn server_config_settings() {
        let dir = TempDir::new().unwrap();
        let config = server_config(single(dir.path(), &Ca::new().issue(&["s.test"], P256))).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(config.ignore_client_order);
        assert!(config.ticketer.enabled());
        assert_eq!(config.max_early_data_size, 0);
    }

    #[tokio::test]
    async fn alpn_and_protocol_versions() {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        let addr = serve(single(dir.path(), &ca.issue(&["s.test"], P256))).await;

        let tls = connect(addr, ca.roots(), "s.test", &DEFAULT_CLIENT).await;
        assert_eq!(conn(&tls).alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(conn(&tls).protocol_version(), Some(ProtocolVersion::TLSv1_3));

        // Server preference: h2 wins even when the client lists it last.
        let opts = ClientOpts {
            alpn: &[b"http/1.1", b"h2"],
            ..DEFAULT_CLIENT
        };
        assert_eq!(
            conn(&connect(addr, ca.roots(), "s.test", &opts).await).alpn_protocol(),
            Some(&b"h2"[..])
        );

        let opts = ClientOpts {
            alpn: &[b"http/1.1"],
            ..DEFAULT_CLIENT
        };
        assert_eq!(
            conn(&connect(addr, ca.roots(), "s.test", &opts).await).alpn_protocol(),
            Some(&b"http/1.1"[..])
        );

        let opts = ClientOpts {
            alpn: &[],
            ..DEFAULT_CLIENT
        };
        assert_eq!(
            conn(&connect(addr, ca.roots(), "s.test", &opts).await).alpn_protocol(),
            None
        );

        let opts = ClientOpts {
            versions: TLS12_ONLY,
            ..DEFAULT_CLIENT
        };
        let tls = connect(addr, ca.roots(), "s.test", &opts).await;
        assert_eq!(conn(&tls).protocol_version(), Some(ProtocolVersion::TLSv1_2));
        assert_eq!(conn(&tls).alpn_protocol(), Some(&b"h2"[..]));

        // A client offering only protocols we do not speak is refused (RFC 7301).
        let opts = ClientOpts {
            alpn: &[b"spdy/3"],
            ..DEFAULT_CLIENT
        };
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("s.test").unwrap();
        assert!(TlsConnector::from(client_config(ca.roots(), &opts))
            .connect(name, tcp)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn sessions_resume() {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        let addr = serve(single(dir.path(), &ca.issue(&["s.test"], P256))).await;
        for versions in [TLS13_ONLY, TLS12_ONLY] {
            let config = client_config(
                ca.roots(),
                &ClientOpts {
                    versions,
                    ..DEFAULT_CLIENT
                },
            );
            let first = connect_with(addr, Arc::clone(&config), "s.test").await;
            assert_eq!(conn(&first).handshake_kind(), Some(HandshakeKind::Full));
            let second = connect_with(addr, config, "s.test").await;
            assert_eq!(
                conn(&second).handshake_kind(),
                Some(HandshakeKind::Resumed),
                "{versions:?}"
            );
        }
    }

    #[tokio::test]
    async fn sni_selects_the_certificate() {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        // The default also covers other.test, so a client can verify it for a name no spec claims.
        let issued = [
            ca.issue(&["a.test"], P256),
            ca.issue(&["default.test", "other.test"], P256),
            ca.issue(&["*.b.test"], &rcgen::PKCS_ED25519),
        ];
        let specs = vec![
            write_pair(dir.path(), "a", &["a.test"], &issued[0]),
            write_pair(dir.path(), "d", &[], &issued[1]),
            write_pair(dir.path(), "b", &["*.b.test"], &issued[2]),
        ];
        let addr = serve(CertStore::load(&specs).unwrap()).await;
        let got = |name: &'static str, sni: bool| {
            let roots = ca.roots();
            async move { leaf(&connect(addr, roots, name, &ClientOpts { sni, ..DEFAULT_CLIENT }).await) }
        };
        assert_eq!(got("a.test", true).await, issued[0].leaf);
        assert_eq!(got("x.b.test", true).await, issued[2].leaf);
        assert_eq!(got("other.test", true).await, issued[1].leaf);
        assert_eq!(got("default.test", false).await, issued[1].leaf);
    }

    // ---- hot reload ----

    /// A store serving one pair for s.test, and a connection established to it.
    struct Served {
        /// Kept: the pair's files live in it.
        _dir: TempDir,
        ca: Ca,
        old: Issued,
        spec: CertFiles,
        store: Arc<CertStore>,
        addr: std::net::SocketAddr,
    }

    async fn served() -> (Served, tokio_rustls::client::TlsStream<tokio::net::TcpStream>) {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        let old = ca.issue(&["s.test"], P256);
        let spec = write_pair(dir.path(), "site", &[], &old);
        let store = CertStore::load(std::slice::from_ref(&spec)).unwrap();
        let addr = serve(Arc::clone(&store)).await;
        let established = connect(addr, ca.roots(), "s.test", &DEFAULT_CLIENT).await;
        (
            Served {
                _dir: dir,
                ca,
                old,
                spec,
                store,
                addr,
            },
            established,
        )
    }

    #[tokio::test]
    async fn reload_after_rename_serves_the_new_cert_and_keeps_connections() {
        let (srv, mut established) = served().await;
        let Served {
            ca, old, spec, store, ..
        } = &srv;
        let addr = srv.addr;
        assert_eq!(leaf(&established), old.leaf);

        // Unchanged files: a no-op reload.
        store.reload().unwrap();

        let new = ca.issue(&["s.test"], &rcgen::PKCS_ECDSA_P384_SHA384);
        replace(&spec.key, &new.key);
        replace(&spec.cert, &new.chain);
        store.reload().unwrap();

        let fresh = connect(addr, ca.roots(), "s.test", &DEFAULT_CLIENT).await;
        assert_eq!(leaf(&fresh), new.leaf);
        echo(&mut established).await;
        echo(&mut established).await;
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn reload_after_symlink_swap() {
        let dir = TempDir::new().unwrap();
        let ca = Ca::new();
        let archive = dir.path().join("archive");
        let live = dir.path().join("live");
        std::fs::create_dir_all(&archive).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        let link = |target: &Path, at: &Path| {
            // certbot-style: a new link under a temp name, renamed over the old one.
            let tmp = at.with_extension("new");
            std::os::unix::fs::symlink(target, &tmp).unwrap();
            std::fs::rename(&tmp, at).unwrap();
        };
        let spec = CertFiles {
            names: vec![],
            cert: live.join("fullchain.pem"),
            key: live.join("privkey.pem"),
        };

        let old = ca.issue(&["s.test"], P256);
        link(&write(&archive, "fullchain1.pem", &old.chain), &spec.cert);
        link(&write(&archive, "privkey1.pem", &old.key), &spec.key);
        let store = CertStore::load(std::slice::from_ref(&spec)).unwrap();
        let addr = serve(Arc::clone(&store)).await;
        let mut established = connect(addr, ca.roots(), "s.test", &DEFAULT_CLIENT).await;
        assert_eq!(leaf(&established), old.leaf);

        let new = ca.issue(&["s.test"], P256);
        link(&write(&archive, "fullchain2.pem", &new.chain), &spec.cert);
        link(&write(&archive, "privkey2.pem", &new.key), &spec.key);
        store.reload().unwrap();
        assert_eq!(
            leaf(&connect(addr, ca.roots(), "s.test", &DEFAULT_CLIENT).await),
            new.leaf
        );
        echo(&mut established).await;
    }

    #[tokio::test]
    async fn broken_reload_keeps_the_old_cert() {
        let (srv, mut established) = served().await;
        let Served {
            ca, old, spec, store, ..
        } = &srv;
        let addr = srv.addr;

        // Half-done renewal: new cert, old key.
        let new = ca.issue(&["s.test"], P256);
        replace(&spec.cert, &new.chain);
        let err = store.reload().unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert_eq!(
            leaf(&connect(addr, ca.roots(), "s.test", &DEFAULT_CLIENT).await),
            old.leaf
        );

        // A vanished file is refused the same way.
        std::fs::remove_file(&spec.key).unwrap();
        assert!(matches!(store.reload().unwrap_err(), TlsError::Io { .. }));
        assert_eq!(
            leaf(&connect(addr, ca.roots(), "s.test", &DEFAULT_CLIENT).await),
            old.leaf
        );

        // Once the key arrives, the next reload takes the new pair.
        replace(&spec.key, &new.key);
        store.reload().unwrap();
        assert_eq!(
            leaf(&connect(addr, ca.roots(), "s.test", &DEFAULT_CLIENT).await),
            new.leaf
        );
        echo(&mut established).await;
    }
}
