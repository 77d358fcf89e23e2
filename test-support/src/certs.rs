//! A throwaway CA and a certificate for localhost, 127.0.0.1 and ::1, in a temp directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
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
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Outpost test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key)?;
        let leaf_key = KeyPair::generate()?;
        let leaf_params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        let paths = (
            dir.path().join("ca.pem"),
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
        );
        std::fs::write(&paths.0, ca.pem())?;
        std::fs::write(&paths.1, leaf.pem())?;
        std::fs::write(&paths.2, leaf_key.serialize_pem())?;
        Ok(Self {
            _dir: dir,
            ca_pem: ca.pem(),
            ca: paths.0,
            cert: paths.1,
            key: paths.2,
        })
    }
}
