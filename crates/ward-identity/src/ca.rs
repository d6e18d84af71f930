//! The certificate authority: signs workload certificates with SPIFFE identities.
//!
//! Two sources for the issuing key, as in Istio:
//! - built-in: a self-signed root generated on first start and persisted in the server's
//!   state directory (`<state>/ca/root-cert.pem`, `root-key.pem`), so a restart keeps the
//!   trust root and nothing that runs breaks;
//! - plugged-in: an intermediate CA given as files with Istio's names (`ca-cert.pem`,
//!   `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`), so meshes whose intermediates share one
//!   root trust each other.
//!
//! The trust bundle may hold more than one root (`root-cert.pem` with several certificates,
//! plus `--trust-bundle` files), so a root can be rotated with an overlap period.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use thiserror::Error;
use ward_config::SpiffeId;

/// Lifetime of a built-in root, as Kuma's (10 years).
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start a little in the past, so a peer whose clock is behind accepts them.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("plugged-in CA directory {dir}: missing {file} (Istio's plug-in CA files are ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem)")]
    MissingPluggedInFile { dir: PathBuf, file: &'static str },
    #[error("signing a certificate: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("generating an RSA key: {0}")]
    Rsa(String),
}

/// The key type of the root and of workload certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (Istio's and Kuma's default for workloads: fast, small).
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256.
    Rsa2048,
}

impl KeyAlgorithm {
    pub fn generate(self) -> Result<KeyPair, CaError> {
        match self {
            KeyAlgorithm::EcdsaP256 => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?),
            KeyAlgorithm::Rsa2048 => {
                // ring signs with RSA keys but cannot generate them: the `rsa` crate does.
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)
                    .map_err(|e| CaError::Rsa(e.to_string()))?;
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| CaError::Rsa(e.to_string()))?;
                let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
                Ok(KeyPair::from_pkcs8_der_and_sign_algo(
                    &der,
                    &rcgen::PKCS_RSA_SHA256,
                )?)
            }
        }
    }
}

/// Where the CA's key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    BuiltIn { dir: PathBuf },
    PluggedIn { dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct CaOptions {
    /// The server's state directory; the built-in root lives in `<state_dir>/ca/`.
    pub state_dir: PathBuf,
    /// Istio-style plug-in CA files; the built-in root is not used when set.
    pub plugged_in_dir: Option<PathBuf>,
    pub algorithm: KeyAlgorithm,
    /// More trusted roots (PEM files), e.g. the next root during a rotation.
    pub extra_trust_roots: Vec<PathBuf>,
    pub trust_domain: String,
}

impl CaOptions {
    /// For commands that only sign: the default key type and no extra roots.
    pub fn signing(
        state_dir: PathBuf,
        plugged_in_dir: Option<PathBuf>,
        trust_domain: &str,
    ) -> Self {
        CaOptions {
            state_dir,
            plugged_in_dir,
            algorithm: KeyAlgorithm::default(),
            extra_trust_roots: Vec::new(),
            trust_domain: trust_domain.to_string(),
        }
    }
}

/// A signed workload certificate and its private key.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedCertificate {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then the intermediates up to (not including) the root.
    pub cert_chain_pem: String,
    pub private_key_pem: String,
    pub serial_hex: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl IssuedCertificate {
    pub fn lifetime(&self) -> Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The issuing certificate and the chain above it, minus the root (appended to leaves).
    chain_pem: String,
    trust_bundle_pem: String,
    pub source: CaSource,
    /// Key type of the workload certificates it signs (the CA's own key may differ).
    pub algorithm: KeyAlgorithm,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("source", &self.source)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes through a temporary file and a rename, so a crash never leaves half a key.
pub fn write_private(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Each `-----BEGIN CERTIFICATE-----` block of a PEM text.
pub fn pem_certificates(text: &str) -> Vec<String> {
    let mut certs = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            current = Some(String::new());
        }
        if let Some(cert) = &mut current {
            cert.push_str(line);
            cert.push('\n');
        }
        if line == "-----END CERTIFICATE-----" {
            certs.extend(current.take());
        }
    }
    certs
}

/// Parses a private key: PKCS#8 (`PRIVATE KEY`) or PKCS#1 RSA (`RSA PRIVATE KEY`).
fn parse_private_key(path: &Path, pem: &str) -> Result<KeyPair, CaError> {
    let bad = |message: String| CaError::BadFile {
        path: path.to_path_buf(),
        message,
    };
    if pem.contains("BEGIN RSA PRIVATE KEY") {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
            .map_err(|e| bad(format!("not a PKCS#1 RSA key: {e}")))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| bad(format!("re-encoding the RSA key: {e}")))?;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
        return KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_RSA_SHA256)
            .map_err(|e| bad(e.to_string()));
    }
    if pem.contains("BEGIN EC PRIVATE KEY") {
        return Err(bad("SEC1 EC keys are not supported: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in ca-key.pem -out ca-key.pem.new`".into()));
    }
    KeyPair::from_pem(pem).map_err(|e| bad(format!("not a PKCS#8 private key: {e}")))
}

fn root_params(trust_domain: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "Ward root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    params.serial_number = Some(random_serial());
    params
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, as RFC 5280 wants serials.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

impl CertificateAuthority {
    /// The plugged-in CA if configured, otherwise the persisted built-in root (created on
    /// first start).
    pub fn load_or_create(options: &CaOptions) -> Result<Self, CaError> {
        let mut ca = match &options.plugged_in_dir {
            Some(dir) => Self::plugged_in(dir, options.algorithm)?,
            None => Self::built_in(&options.state_dir.join("ca"), options)?,
        };
        for path in &options.extra_trust_roots {
            let text = read(path)?;
            let certs = pem_certificates(&text);
            if certs.is_empty() {
                return Err(CaError::BadFile {
                    path: path.clone(),
                    message: "no PEM certificate in it".into(),
                });
            }
            for cert in certs {
                if !ca.trust_bundle_pem.contains(&cert) {
                    ca.trust_bundle_pem.push_str(&cert);
                }
            }
        }
        Ok(ca)
    }

    fn built_in(dir: &Path, options: &CaOptions) -> Result<Self, CaError> {
        let cert_path = dir.join("root-cert.pem");
        let key_path = dir.join("root-key.pem");
        let (cert_pem, key) = if cert_path.exists() && key_path.exists() {
            let key = parse_private_key(&key_path, &read(&key_path)?)?;
            (read(&cert_path)?, key)
        } else {
            std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let key = options.algorithm.generate()?;
            let cert = root_params(&options.trust_domain).self_signed(&key)?;
            write_private(&key_path, &key.serialize_pem(), 0o600)?;
            write_private(&cert_path, &cert.pem(), 0o644)?;
            tracing::info!(dir = %dir.display(), algorithm = ?options.algorithm, "generated a new root CA");
            (cert.pem(), key)
        };
        let algorithm = options.algorithm;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| CaError::BadFile {
            path: cert_path.clone(),
            message: format!("not a CA certificate: {e}"),
        })?;
        Ok(CertificateAuthority {
            issuer,
            chain_pem: String::new(),
            trust_bundle_pem: pem_certificates(&cert_pem).concat(),
            source: CaSource::BuiltIn {
                dir: dir.to_path_buf(),
            },
            algorithm,
        })
    }

    fn plugged_in(dir: &Path, algorithm: KeyAlgorithm) -> Result<Self, CaError> {
        let file = |name: &'static str| {
            let path = dir.join(name);
            if path.exists() {
                read(&path)
            } else {
                Err(CaError::MissingPluggedInFile {
                    dir: dir.to_path_buf(),
                    file: name,
                })
            }
        };
        let ca_cert = file("ca-cert.pem")?;
        let key_path = dir.join("ca-key.pem");
        let key = parse_private_key(&key_path, &file("ca-key.pem")?)?;
        let root = file("root-cert.pem")?;
        let chain = file("cert-chain.pem")?;
        let roots = pem_certificates(&root);
        if roots.is_empty() {
            return Err(CaError::BadFile {
                path: dir.join("root-cert.pem"),
                message: "no PEM certificate in it".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, key).map_err(|e| CaError::BadFile {
            path: dir.join("ca-cert.pem"),
            message: format!("not a CA certificate: {e}"),
        })?;
        // Istio's cert-chain.pem holds the intermediate chain, usually ending with the root:
        // leaves carry the intermediates only, peers have the root in their bundle.
        let mut chain_pem = String::new();
        let issuing = pem_certificates(&ca_cert);
        for cert in issuing.iter().chain(pem_certificates(&chain).iter()) {
            if !roots.contains(cert) && !chain_pem.contains(cert.as_str()) {
                chain_pem.push_str(cert);
            }
        }
        Ok(CertificateAuthority {
            issuer,
            chain_pem,
            trust_bundle_pem: roots.concat(),
            source: CaSource::PluggedIn {
                dir: dir.to_path_buf(),
            },
            algorithm,
        })
    }

    /// Every root a workload trusts, PEM.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// Signs a certificate for `spiffe_id` valid for `lifetime`, with a new key.
    pub fn issue(
        &self,
        spiffe_id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        self.issue_with_names(spiffe_id, &[], &[], lifetime)
    }

    /// Like [`Self::issue`], with DNS names and IP addresses besides the SPIFFE id (for
    /// xds-server's own serving certificate).
    pub fn issue_with_names(
        &self,
        spiffe_id: &SpiffeId,
        dns_names: &[&str],
        ips: &[std::net::IpAddr],
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let key = self.algorithm.generate()?;
        let mut params = CertificateParams::default();
        // SPIFFE X.509-SVIDs identify by the URI SAN; the subject stays empty, as Istio's.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.to_string().try_into()?)];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let now = SystemTime::now();
        let not_before = now - BACKDATE;
        let not_after = now + lifetime;
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            spiffe_id: spiffe_id.clone(),
            cert_chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            private_key_pem: key.serialize_pem(),
            serial_hex: hex::encode(serial.to_bytes()),
            not_before: truncate_to_seconds(not_before),
            not_after: truncate_to_seconds(not_after),
        })
    }

    /// Signs an intermediate CA for `common_name` (what `cacerts` holds in Istio's plug-in
    /// layout). Used to set up multi-cluster meshes and by tests.
    pub fn issue_intermediate(
        &self,
        common_name: &str,
        lifetime: Duration,
    ) -> Result<(String, String), CaError> {
        let key = self.algorithm.generate()?;
        let mut params = root_params(common_name);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.not_after = (SystemTime::now() + lifetime).into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// X.509 times have whole seconds.
fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> CaOptions {
        CaOptions {
            state_dir: dir.to_path_buf(),
            plugged_in_dir: None,
            algorithm: KeyAlgorithm::EcdsaP256,
            extra_trust_roots: Vec::new(),
            trust_domain: "cluster.local".to_string(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ward-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn der(pem_text: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
        pem.contents
    }

    /// Checks that `child` is signed by `parent`'s key.
    fn signed_by(child: &str, parent: &str) -> bool {
        let child = der(child);
        let parent = der(parent);
        let (_, child) = x509_parser::parse_x509_certificate(&child).unwrap();
        let (_, parent) = x509_parser::parse_x509_certificate(&parent).unwrap();
        child.verify_signature(Some(parent.public_key())).is_ok()
    }

    #[test]
    fn built_in_root_is_created_once_and_kept_across_restarts() {
        let dir = temp_dir("persist");
        let first = CertificateAuthority::load_or_create(&options(&dir)).unwrap();
        let second = CertificateAuthority::load_or_create(&options(&dir)).unwrap();
        assert_eq!(first.trust_bundle_pem(), second.trust_bundle_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca/root-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the root key is readable by its owner only"
        );
        // A certificate signed before the restart verifies against the root after it.
        let cert = first
            .issue(
                &"spiffe://cluster.local/ns/default/sa/a".parse().unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(signed_by(&cert.cert_chain_pem, second.trust_bundle_pem()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn workload_certificates_carry_the_spiffe_id_and_the_lifetime() {
        let dir = temp_dir("leaf");
        let ca = CertificateAuthority::load_or_create(&options(&dir)).unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/exam-scheduler-sa"
            .parse()
            .unwrap();
        let cert = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let der = der(&cert.cert_chain_pem);
        assert_eq!(crate::spiffe::uri_sans(&der).unwrap(), vec![id.to_string()]);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!parsed.is_ca());
        let validity = parsed.validity().time_to_expiration().unwrap();
        assert!(validity.whole_seconds() > 3590 && validity.whole_seconds() <= 3600);
        assert_eq!(cert.lifetime(), Duration::from_secs(3660));
        assert!(cert.private_key_pem.contains("PRIVATE KEY"));
        // Two certificates never share a key or a serial.
        let other = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        assert_ne!(other.serial_hex, cert.serial_hex);
        assert_ne!(other.private_key_pem, cert.private_key_pem);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plugged_in_intermediates_under_one_root_trust_each_other() {
        let root_dir = temp_dir("root");
        let root = CertificateAuthority::load_or_create(&options(&root_dir)).unwrap();
        let mut clusters = Vec::new();
        for name in ["cluster1", "cluster2"] {
            let (cert, key) = root
                .issue_intermediate(name, Duration::from_secs(86400))
                .unwrap();
            let dir = temp_dir(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ca-cert.pem"), &cert).unwrap();
            std::fs::write(dir.join("ca-key.pem"), &key).unwrap();
            std::fs::write(dir.join("root-cert.pem"), root.trust_bundle_pem()).unwrap();
            // Istio's cert-chain.pem: the intermediate, then the root.
            std::fs::write(
                dir.join("cert-chain.pem"),
                format!("{cert}{}", root.trust_bundle_pem()),
            )
            .unwrap();
            let mut opts = options(&temp_dir("unused"));
            opts.plugged_in_dir = Some(dir.clone());
            let ca = CertificateAuthority::load_or_create(&opts).unwrap();
            assert!(matches!(ca.source, CaSource::PluggedIn { .. }));
            clusters.push((ca, cert, dir));
        }
        let (ca1, intermediate1, _) = &clusters[0];
        let (ca2, _, _) = &clusters[1];
        assert_eq!(ca1.trust_bundle_pem(), ca2.trust_bundle_pem());
        let leaf = ca1
            .issue(
                &"spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        let chain = pem_certificates(&leaf.cert_chain_pem);
        assert_eq!(chain.len(), 2, "leaf and intermediate, not the root");
        assert!(signed_by(&chain[0], intermediate1));
        assert!(signed_by(&chain[1], ca2.trust_bundle_pem()));
        for (_, _, dir) in clusters {
            std::fs::remove_dir_all(dir).unwrap();
        }
        std::fs::remove_dir_all(&root_dir).unwrap();
    }

    #[test]
    fn a_missing_plug_in_file_is_named() {
        let dir = temp_dir("missing");
        std::fs::create_dir_all(&dir).unwrap();
        let mut opts = options(&dir);
        opts.plugged_in_dir = Some(dir.clone());
        let error = CertificateAuthority::load_or_create(&opts).unwrap_err();
        assert!(error.to_string().contains("missing ca-cert.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rsa_roots_sign_rsa_workload_certificates() {
        let dir = temp_dir("rsa");
        let mut opts = options(&dir);
        opts.algorithm = KeyAlgorithm::Rsa2048;
        let ca = CertificateAuthority::load_or_create(&opts).unwrap();
        let cert = ca
            .issue(
                &"spiffe://cluster.local/ns/a/sa/b".parse().unwrap(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(signed_by(&cert.cert_chain_pem, ca.trust_bundle_pem()));
        let leaf = der(&cert.cert_chain_pem);
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert!(matches!(
            parsed.public_key().parsed(),
            Ok(x509_parser::public_key::PublicKey::RSA(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn extra_trust_roots_join_the_bundle() {
        let a = temp_dir("bundle-a");
        let b = temp_dir("bundle-b");
        let ca_b = CertificateAuthority::load_or_create(&options(&b)).unwrap();
        let extra = b.join("next-root.pem");
        std::fs::write(&extra, ca_b.trust_bundle_pem()).unwrap();
        let mut opts = options(&a);
        opts.extra_trust_roots = vec![extra];
        let ca_a = CertificateAuthority::load_or_create(&opts).unwrap();
        assert_eq!(pem_certificates(ca_a.trust_bundle_pem()).len(), 2);
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}
