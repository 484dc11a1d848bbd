//! The cryptography behind our JWTs: HS256 (HMAC-SHA256) and nothing else.
//!
//! ChitChat signs and checks HS256 only (SPEC, Tokens), so jsonwebtoken's `rust_crypto`
//! provider, which compiles in RSA, P-256, P-384 and Ed25519 as well, is not used: that
//! provider alone brought 38 crates into the server's tree, among them `rsa`, whose
//! advisory (RUSTSEC-2023-0071) was the only open one in it. jsonwebtoken (10.3 and later)
//! takes a [`CryptoProvider`] of the application's own; this one is HMAC-SHA256 over the
//! `hmac` and `sha2` crates, and refuses every other algorithm with `InvalidAlgorithm`,
//! which `token::verify` answers with 402 (it refuses a header naming another algorithm
//! before this is ever asked).
//!
//! The provider is installed once per process, the first time a token is signed or checked
//! ([`install`]), so unit tests and the fuzz targets that call `token` directly need no
//! start-up step. JWK helpers are not provided: ChitChat never reads a JWK.

use std::sync::Once;

use hmac::{Hmac, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use sha2::Sha256;

/// jsonwebtoken's provider for this process: HS256 only.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    jwk_utils: JwkUtils::new_unimplemented(),
};

/// Makes [`PROVIDER`] the process's provider, once; every call after the first does
/// nothing. Called before each use of jsonwebtoken.
pub fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        // Err only if another provider was installed first, and nothing else installs one.
        let _ = PROVIDER.install_default();
    });
}

/// An HMAC-SHA256 keyed with a room's secret; signs and verifies.
struct Hs256(Hmac<Sha256>);

impl Hs256 {
    fn new(algorithm: &Algorithm, secret: Result<&[u8], Error>) -> Result<Hs256, Error> {
        if *algorithm != Algorithm::HS256 {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        let mac =
            Hmac::<Sha256>::new_from_slice(secret?).map_err(|_| ErrorKind::InvalidKeyFormat)?;
        Ok(Hs256(mac))
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
    Ok(Box::new(Hs256::new(algorithm, key.try_get_hmac_secret())?))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    Ok(Box::new(Hs256::new(algorithm, key.try_get_hmac_secret())?))
}

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, message: &[u8]) -> Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    /// In constant time (`hmac`'s `verify_slice`), so a forger learns nothing from timing.
    fn verify(&self, message: &[u8], tag: &Vec<u8>) -> Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        mac.verify_slice(tag).map_err(signature::Error::from_source)
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231, test case 2: HMAC-SHA256 of "what do ya want for nothing?" keyed "Jefe".
    #[test]
    fn signs_as_rfc_4231_says() {
        let key = EncodingKey::from_secret(b"Jefe");
        let tag = signer(&Algorithm::HS256, &key)
            .unwrap()
            .try_sign(b"what do ya want for nothing?")
            .unwrap();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verifies_its_own_tags_only() {
        let key = DecodingKey::from_secret(b"k");
        let tag = signer(&Algorithm::HS256, &EncodingKey::from_secret(b"k"))
            .unwrap()
            .try_sign(b"m")
            .unwrap();
        let check = verifier(&Algorithm::HS256, &key).unwrap();
        assert!(check.verify(b"m", &tag).is_ok());
        assert!(check.verify(b"n", &tag).is_err());
        assert!(check.verify(b"m", &tag[..31].to_vec()).is_err());
    }

    #[test]
    fn every_other_algorithm_is_refused() {
        let key = EncodingKey::from_secret(b"k");
        for algorithm in [
            Algorithm::HS384,
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ] {
            let refused = signer(&algorithm, &key).err().unwrap();
            assert_eq!(
                *refused.kind(),
                ErrorKind::InvalidAlgorithm,
                "{algorithm:?}"
            );
        }
    }
}
