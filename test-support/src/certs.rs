//! A throwaway CA and a certificate for localhost, 127.0.0.1 and ::1, in a temp directory;
//! also the variants TLS tests need: an expired certificate, and a full chain through an
//! intermediate CA as a public CA issues it.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// PEM files of a test CA and a localhost certificate it signed.
#[derive(Debug)]
pub struct Certs {
    _dir: TempDir,
    /// The CA certificate, for clients and agents to trust.
    pub ca: PathBuf,
    /// The CA certificate's PEM text.
    pub ca_pem: String,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl Certs {
    /// Generates a CA and a certificate for the loopback names.
    pub fn generate() -> anyhow::Result<Self> {
        Self::for_names(&["localhost", "127.0.0.1", "::1"])
    }

    /// Generates a CA and a certificate for `names`.
    pub fn for_names(names: &[&str]) -> anyhow::Result<Self> {
        Self::issue("Outpost test CA", names)
    }

    /// Generates a CA named `ca_name` (not the usual "Outpost test CA", so no other test
    /// CA can be mistaken for it) and a certificate for the loopback names.
    pub fn from_ca_named(ca_name: &str) -> anyhow::Result<Self> {
        Self::issue(ca_name, &["localhost", "127.0.0.1", "::1"])
    }

    fn issue(ca_name: &str, names: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (ca_params, ca_key) = ca_params(ca_name)?;
        let ca = ca_params.self_signed(&ca_key)?;
        let leaf_key = KeyPair::generate()?;
        let leaf_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        Self::write(dir, ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    /// A CA and a certificate for the loopback names that expired in 2021 (valid from
    /// 2020-01-01 to 2021-01-01): everything about it is right except the date.
    pub fn expired() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (ca_params, ca_key) = ca_params("Outpost test CA")?;
        let ca = ca_params.self_signed(&ca_key)?;
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(loopback_names())?;
        leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf_params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let leaf =
            leaf_params.signed_by(&leaf_key, &rcgen::Issuer::from_params(&ca_params, &ca_key))?;
        Self::write(dir, ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    }

    /// A root CA, an intermediate CA it signed and a certificate for the loopback names the
    /// intermediate signed, each with the extensions strict verifiers require (authority and
    /// subject key identifiers, key usages, `serverAuth`). `cert` holds the leaf and then the
    /// intermediate, the full chain a server must send; `ca` holds only the root.
    pub fn with_intermediate() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (root_params, root_key) = ca_params("Outpost test root CA")?;
        let root = root_params.self_signed(&root_key)?;
        let (mut mid_params, mid_key) = ca_params("Outpost test intermediate CA")?;
        mid_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        mid_params.use_authority_key_identifier_extension = true;
        let mid = mid_params.signed_by(
            &mid_key,
            &rcgen::Issuer::from_params(&root_params, &root_key),
        )?;
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(loopback_names())?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(
            &leaf_key,
            &rcgen::Issuer::from_params(&mid_params, &mid_key),
        )?;
        let chain = format!("{}{}", leaf.pem(), mid.pem());
        Self::write(dir, root.pem(), chain, leaf_key.serialize_pem())
    }

    fn write(dir: TempDir, ca: String, cert: String, key: String) -> anyhow::Result<Self> {
        let paths = (
            dir.path().join("ca.pem"),
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
        );
        std::fs::write(&paths.0, &ca)?;
        std::fs::write(&paths.1, cert)?;
        std::fs::write(&paths.2, key)?;
        Ok(Self {
            _dir: dir,
            ca_pem: ca,
            ca: paths.0,
            cert: paths.1,
            key: paths.2,
        })
    }
}

fn loopback_names() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
}

/// Parameters and key of a CA named `name`.
fn ca_params(name: &str) -> anyhow::Result<(CertificateParams, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok((params, key))
}
