//! PSKC (RFC 6030) key containers: the XML files token vendors ship seeds in, parsed into
//! key packages with one verdict per key.
//!
//! Supported: plaintext keys (§6 without `EncryptionKey`) and keys encrypted under a
//! pre-shared key with AES-128-CBC and authenticated with HMAC-SHA1 (§6.1, encrypt-then-MAC
//! over IV and ciphertext; the MAC key itself travels encrypted under the pre-shared key).
//! Not supported, and reported per key: password-derived keys (§6.2), asymmetric keys
//! (§6.3), other ciphers, encrypted counters.
//!
//! Like the rest of this crate the parser is pure: bytes in, keys out, no I/O. A bad key never
//! spoils the file: it is reported with its position and id so that an operator can fix
//! exactly that one, while the caller imports the good ones. Errors never contain key bytes.

use std::fmt;

use aes::Aes128;
use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use roxmltree::{Document, Node};
use sha1::Sha1;
use zeroize::{Zeroize, Zeroizing};

use crate::code::Digits;
use crate::hotp::{Algorithm, Counter};
use crate::secret::{KeyPolicy, Secret, SecretError};
use crate::totp::Period;
use crate::uri::OtpKind;

/// Largest PSKC document accepted. Real files of a few hundred thousand tokens fit.
pub const MAX_PSKC_LEN: usize = 64 * 1024 * 1024;

const NS_PSKC: &str = "urn:ietf:params:xml:ns:keyprov:pskc";
const NS_XENC: &str = "http://www.w3.org/2001/04/xmlenc#";
const NS_DS: &str = "http://www.w3.org/2000/09/xmldsig#";
const ALG_HOTP: &str = "urn:ietf:params:xml:ns:keyprov:pskc:hotp";
const ALG_TOTP: &str = "urn:ietf:params:xml:ns:keyprov:pskc:totp";
const ENC_AES128_CBC: &str = "http://www.w3.org/2001/04/xmlenc#aes128-cbc";
const MAC_HMAC_SHA1: &str = "http://www.w3.org/2000/09/xmldsig#hmac-sha1";

/// The AES-128 key shared out of band with the token vendor (RFC 6030 §6.1).
#[derive(Clone)]
pub struct PreSharedKey(Zeroizing<[u8; 16]>);

impl fmt::Debug for PreSharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PreSharedKey([redacted])")
    }
}

impl PreSharedKey {
    /// A key from its 16 bytes.
    pub fn new(bytes: [u8; 16]) -> Self {
        PreSharedKey(Zeroizing::new(bytes))
    }

    /// A key from 32 hexadecimal digits (either case; surrounding white space ignored), as
    /// vendors print it.
    ///
    /// # Errors
    /// [`PskcError::BadPreSharedKey`] for anything else; the text is not echoed.
    pub fn from_hex(text: &str) -> Result<Self, PskcError> {
        let text = text.trim();
        if text.len() != 32 {
            return Err(PskcError::BadPreSharedKey);
        }
        let mut decoded = Zeroizing::new(
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(text.as_bytes())
                .map_err(|_| PskcError::BadPreSharedKey)?,
        );
        let mut key = [0u8; 16];
        key.copy_from_slice(&decoded);
        decoded.zeroize();
        let psk = PreSharedKey::new(key);
        key.zeroize();
        Ok(psk)
    }
}

/// Why a whole PSKC document was refused (nothing in it can be trusted or found).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PskcError {
    /// Larger than [`MAX_PSKC_LEN`].
    #[error("the PSKC document is {len} bytes long; at most {max} are accepted")]
    TooLarge {
        /// Length given.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// Not UTF-8 text.
    #[error("the PSKC document is not UTF-8 text")]
    NotUtf8,
    /// Not well-formed XML (or uses a DTD, which is refused).
    #[error("the PSKC document is not well-formed XML (line {line}, column {column})")]
    Xml {
        /// 1-based line of the problem.
        line: u32,
        /// 1-based column of the problem.
        column: u32,
    },
    /// The root element is not an RFC 6030 `KeyContainer`.
    #[error("not a PSKC file: the root element is not {NS_PSKC} KeyContainer")]
    NotKeyContainer,
    /// `Version` is missing or not "1.0".
    #[error("unsupported PSKC version (only 1.0 is known)")]
    UnsupportedVersion,
    /// The pre-shared key given is not 32 hex digits.
    #[error("the pre-shared key must be 32 hexadecimal digits (AES-128)")]
    BadPreSharedKey,
}

/// Why one key of a PSKC document was refused. No variant carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The `Key` element has no `Id` attribute.
    #[error("the key has no Id attribute")]
    MissingId,
    /// The key's `Algorithm` is not the HOTP or TOTP URI of RFC 6030.
    #[error("unsupported key algorithm (only pskc:hotp and pskc:totp)")]
    UnsupportedAlgorithm,
    /// `Suite` names a hash other than SHA1, SHA256, SHA512.
    #[error("unsupported algorithm suite (expected HMAC-SHA1, HMAC-SHA256 or HMAC-SHA512)")]
    UnsupportedSuite,
    /// `ResponseFormat` is not decimal.
    #[error("unsupported response format encoding (only DECIMAL)")]
    UnsupportedEncoding,
    /// `ResponseFormat Length` is not 6, 7 or 8.
    #[error("the response length is not 6, 7 or 8 digits")]
    BadLength,
    /// No `Data/Secret`.
    #[error("the key has no secret")]
    MissingSecret,
    /// A value that should be base64 is not.
    #[error("the {field} value is not valid base64")]
    BadBase64 {
        /// Which element.
        field: &'static str,
    },
    /// A number (counter, time interval) is not a whole number in range.
    #[error("the {field} value is not a valid whole number")]
    BadNumber {
        /// Which element.
        field: &'static str,
    },
    /// The secret is not acceptable (length).
    #[error("bad secret: {0}")]
    Secret(SecretError),
    /// The key is encrypted but no pre-shared key was given.
    #[error("the key is encrypted; a pre-shared key is needed to import it")]
    NeedsPreSharedKey,
    /// The key is encrypted with something other than a pre-shared AES-128-CBC key.
    #[error("unsupported key protection (only a pre-shared AES-128-CBC key, RFC 6030 §6.1)")]
    UnsupportedEncryption,
    /// An encrypted value has no `ValueMAC`, or the file no `MACMethod`/`MACKey`.
    #[error("the encrypted value has no MAC (ValueMAC, MACMethod and MACKey are required)")]
    MissingMac,
    /// The MAC method is not HMAC-SHA1.
    #[error("unsupported MAC method (only HMAC-SHA1)")]
    UnsupportedMac,
    /// The MAC does not match: wrong pre-shared key or tampered value.
    #[error("the MAC of the encrypted value does not match (wrong pre-shared key or tampered)")]
    MacMismatch,
    /// The ciphertext has a bad length or padding (wrong key or damaged file).
    #[error("the encrypted {field} does not decrypt (wrong pre-shared key or damaged)")]
    Decrypt {
        /// Which value.
        field: &'static str,
    },
    /// A value other than the secret is encrypted (not supported).
    #[error("encrypted {field} values are not supported")]
    EncryptedValue {
        /// Which element.
        field: &'static str,
    },
    /// Another key of the same file has the same serial (or id).
    #[error("another key in the file has the same serial")]
    Duplicate,
}

// The inner error is part of the message, not a `source()`: a chain printer (anyhow's
// `{:#}`) would otherwise say the same thing twice.
impl From<SecretError> for KeyError {
    fn from(e: SecretError) -> Self {
        KeyError::Secret(e)
    }
}

/// One usable key from a PSKC document.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PskcKey {
    /// The `Key Id` attribute.
    pub key_id: String,
    /// `DeviceInfo/SerialNo`, the serial printed on the token, if given.
    pub serial: Option<String>,
    /// `DeviceInfo/Manufacturer`, if given.
    pub manufacturer: Option<String>,
    /// `Issuer`, if given.
    pub issuer: Option<String>,
    /// TOTP with its period, or HOTP with its starting counter.
    pub kind: OtpKind,
    /// The HMAC hash (from `Suite`; SHA1 when absent).
    pub algorithm: Algorithm,
    /// Code length (from `ResponseFormat`; 6 when absent).
    pub digits: Digits,
    /// The seed.
    pub secret: Secret,
}

impl PskcKey {
    /// The name a store should use for this token: the serial if there is one, else the key
    /// id.
    pub fn name(&self) -> &str {
        self.serial.as_deref().unwrap_or(&self.key_id)
    }
}

/// The verdict on one `Key` of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PskcEntry {
    /// 1-based position of the key in the document.
    pub index: usize,
    /// The `Key Id` attribute, if present (for reports).
    pub key_id: Option<String>,
    /// `DeviceInfo/SerialNo`, if present (for reports).
    pub serial: Option<String>,
    /// The key, or why it cannot be used.
    pub result: Result<PskcKey, KeyError>,
}

/// How a document protects its values, found once per document.
enum Protection {
    /// No `EncryptionKey`: only plaintext values are expected.
    None,
    /// `EncryptionKey/KeyName`: a pre-shared key.
    PreShared,
    /// Derived or asymmetric keys: not supported.
    Other,
}

/// Parses a PSKC document into one entry per key.
///
/// `psk` opens encrypted keys; `policy` says whether secrets shorter than 128 bits are
/// allowed. Duplicate serials (or ids, for keys without a serial) after the first are
/// reported as [`KeyError::Duplicate`].
///
/// # Errors
/// [`PskcError`] when the document as a whole is unusable; problems of single keys are in
/// the entries instead.
pub fn parse(
    xml: &[u8],
    psk: Option<&PreSharedKey>,
    policy: KeyPolicy,
) -> Result<Vec<PskcEntry>, PskcError> {
    if xml.len() > MAX_PSKC_LEN {
        return Err(PskcError::TooLarge {
            len: xml.len(),
            max: MAX_PSKC_LEN,
        });
    }
    let text = std::str::from_utf8(xml).map_err(|_| PskcError::NotUtf8)?;
    // DTDs stay disallowed (the default): no entity expansion from hostile files.
    let doc = Document::parse(text).map_err(|e| {
        let pos = e.pos();
        PskcError::Xml {
            line: pos.row,
            column: pos.col,
        }
    })?;
    let root = doc.root_element();
    if !root.has_tag_name((NS_PSKC, "KeyContainer")) {
        return Err(PskcError::NotKeyContainer);
    }
    if root.attribute("Version") != Some("1.0") {
        return Err(PskcError::UnsupportedVersion);
    }
    let protection = match child(root, NS_PSKC, "EncryptionKey") {
        None => Protection::None,
        Some(e) if child(e, NS_DS, "KeyName").is_some() => Protection::PreShared,
        Some(_) => Protection::Other,
    };
    let mac = MacContext::new(root, psk);

    let mut entries = Vec::new();
    let mut names = std::collections::HashSet::new();
    for package in children(root, NS_PSKC, "KeyPackage") {
        let device = child(package, NS_PSKC, "DeviceInfo");
        let serial = device
            .and_then(|d| child(d, NS_PSKC, "SerialNo"))
            .map(|n| text_of(n).to_owned());
        let manufacturer = device
            .and_then(|d| child(d, NS_PSKC, "Manufacturer"))
            .map(|n| text_of(n).to_owned());
        for key in children(package, NS_PSKC, "Key") {
            let key_id = key.attribute("Id").map(str::to_owned);
            let mut result = parse_key(key, &protection, psk, &mac, policy).map(|mut k| {
                k.serial = serial.clone();
                k.manufacturer = manufacturer.clone();
                k
            });
            if let Ok(k) = &result {
                if !names.insert(k.name().to_owned()) {
                    result = Err(KeyError::Duplicate);
                }
            }
            entries.push(PskcEntry {
                index: entries.len() + 1,
                key_id,
                serial: serial.clone(),
                result,
            });
        }
    }
    Ok(entries)
}

/// The document's MAC key, opened once: `Ok(key)`, or the error every encrypted key gets.
struct MacContext(Result<Zeroizing<Vec<u8>>, KeyError>);

impl MacContext {
    fn new(root: Node<'_, '_>, psk: Option<&PreSharedKey>) -> Self {
        let result = (|| {
            let method = child(root, NS_PSKC, "MACMethod").ok_or(KeyError::MissingMac)?;
            if method.attribute("Algorithm") != Some(MAC_HMAC_SHA1) {
                return Err(KeyError::UnsupportedMac);
            }
            let mac_key = child(method, NS_PSKC, "MACKey").ok_or(KeyError::MissingMac)?;
            let psk = psk.ok_or(KeyError::NeedsPreSharedKey)?;
            let sealed = cipher_value(mac_key, "MAC key")?;
            decrypt(psk, &sealed, "MAC key")
        })();
        MacContext(result)
    }
}

fn parse_key(
    key: Node<'_, '_>,
    protection: &Protection,
    psk: Option<&PreSharedKey>,
    mac: &MacContext,
    policy: KeyPolicy,
) -> Result<PskcKey, KeyError> {
    let key_id = key.attribute("Id").ok_or(KeyError::MissingId)?.to_owned();
    let is_totp = match key.attribute("Algorithm") {
        Some(ALG_HOTP) => false,
        Some(ALG_TOTP) => true,
        _ => return Err(KeyError::UnsupportedAlgorithm),
    };
    let issuer = child(key, NS_PSKC, "Issuer").map(|n| text_of(n).to_owned());
    let params = child(key, NS_PSKC, "AlgorithmParameters");
    let algorithm = match params.and_then(|p| child(p, NS_PSKC, "Suite")) {
        None => Algorithm::Sha1,
        Some(suite) => {
            let name = text_of(suite);
            let name = name
                .strip_prefix("HMAC-")
                .or_else(|| name.strip_prefix("hmac-"))
                .unwrap_or(name);
            name.parse().map_err(|_| KeyError::UnsupportedSuite)?
        }
    };
    let digits = match params.and_then(|p| child(p, NS_PSKC, "ResponseFormat")) {
        None => Digits::SIX,
        Some(format) => {
            if format
                .attribute("Encoding")
                .is_some_and(|e| !e.eq_ignore_ascii_case("DECIMAL"))
            {
                return Err(KeyError::UnsupportedEncoding);
            }
            let length = format.attribute("Length").ok_or(KeyError::BadLength)?;
            let n: u32 = length.trim().parse().map_err(|_| KeyError::BadLength)?;
            Digits::new(n).map_err(|_| KeyError::BadLength)?
        }
    };
    let data = child(key, NS_PSKC, "Data").ok_or(KeyError::MissingSecret)?;
    let secret_node = child(data, NS_PSKC, "Secret").ok_or(KeyError::MissingSecret)?;
    let secret = secret_of(secret_node, protection, psk, mac, policy)?;
    let kind = if is_totp {
        let seconds = plain_number(data, "TimeInterval")?.unwrap_or(30);
        OtpKind::Totp {
            period: Period::new(seconds).map_err(|_| KeyError::BadNumber {
                field: "TimeInterval",
            })?,
        }
    } else {
        OtpKind::Hotp {
            counter: Counter(plain_number(data, "Counter")?.unwrap_or(0)),
        }
    };
    Ok(PskcKey {
        key_id,
        serial: None,
        manufacturer: None,
        issuer,
        kind,
        algorithm,
        digits,
        secret,
    })
}

fn secret_of(
    node: Node<'_, '_>,
    protection: &Protection,
    psk: Option<&PreSharedKey>,
    mac: &MacContext,
    policy: KeyPolicy,
) -> Result<Secret, KeyError> {
    if let Some(plain) = child(node, NS_PSKC, "PlainValue") {
        let bytes = base64(text_of(plain), "Secret")?;
        return Ok(Secret::new(bytes, policy)?);
    }
    let Some(encrypted) = child(node, NS_PSKC, "EncryptedValue") else {
        return Err(KeyError::MissingSecret);
    };
    match protection {
        Protection::PreShared => {}
        Protection::None | Protection::Other => return Err(KeyError::UnsupportedEncryption),
    }
    let psk = psk.ok_or(KeyError::NeedsPreSharedKey)?;
    let sealed = cipher_value(encrypted, "Secret")?;
    let mac_key = mac.0.as_ref().map_err(Clone::clone)?;
    let value_mac = child(node, NS_PSKC, "ValueMAC").ok_or(KeyError::MissingMac)?;
    let expected = base64(text_of(value_mac), "ValueMAC")?;
    // Encrypt-then-MAC: check the MAC over IV and ciphertext before decrypting anything.
    let mut check =
        <Hmac<Sha1> as KeyInit>::new_from_slice(mac_key).map_err(|_| KeyError::UnsupportedMac)?;
    check.update(&sealed);
    check
        .verify_slice(&expected)
        .map_err(|_| KeyError::MacMismatch)?;
    let plain = decrypt(psk, &sealed, "Secret")?;
    Ok(Secret::new(plain.to_vec(), policy)?)
}

/// The base64 `xenc:CipherValue` under `node` (which holds `xenc:EncryptionMethod` and
/// `xenc:CipherData`), after checking the method is AES-128-CBC.
fn cipher_value(node: Node<'_, '_>, field: &'static str) -> Result<Vec<u8>, KeyError> {
    let method = child(node, NS_XENC, "EncryptionMethod").ok_or(KeyError::UnsupportedEncryption)?;
    if method.attribute("Algorithm") != Some(ENC_AES128_CBC) {
        return Err(KeyError::UnsupportedEncryption);
    }
    let value = child(node, NS_XENC, "CipherData")
        .and_then(|d| child(d, NS_XENC, "CipherValue"))
        .ok_or(KeyError::Decrypt { field })?;
    base64(text_of(value), field)
}

/// AES-128-CBC with the IV in the first block and PKCS#7 padding (XML Encryption §5.2.2).
fn decrypt(
    psk: &PreSharedKey,
    sealed: &[u8],
    field: &'static str,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if sealed.len() < 32 || !sealed.len().is_multiple_of(16) {
        return Err(KeyError::Decrypt { field });
    }
    let (iv, ciphertext) = sealed.split_at(16);
    let mut iv_block = [0u8; 16];
    iv_block.copy_from_slice(iv);
    let decryptor = cbc::Decryptor::<Aes128>::new(&(*psk.0).into(), &iv_block.into());
    decryptor
        .decrypt_padded_vec::<Pkcs7>(ciphertext)
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Decrypt { field })
}

/// A `Data/<name>/PlainValue` number, `None` if the element is absent.
fn plain_number(data: Node<'_, '_>, name: &'static str) -> Result<Option<u64>, KeyError> {
    let Some(node) = child(data, NS_PSKC, name) else {
        return Ok(None);
    };
    if child(node, NS_PSKC, "EncryptedValue").is_some() {
        return Err(KeyError::EncryptedValue { field: name });
    }
    let text = child(node, NS_PSKC, "PlainValue")
        .map(text_of)
        .ok_or(KeyError::BadNumber { field: name })?;
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KeyError::BadNumber { field: name });
    }
    text.parse()
        .map(Some)
        .map_err(|_| KeyError::BadNumber { field: name })
}

fn base64(text: &str, field: &'static str) -> Result<Vec<u8>, KeyError> {
    let mut compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let decoded = data_encoding::BASE64
        .decode(&compact)
        .map_err(|_| KeyError::BadBase64 { field });
    compact.zeroize();
    decoded
}

fn text_of<'a>(node: Node<'a, '_>) -> &'a str {
    node.text().map_or("", str::trim)
}

fn child<'a, 'i>(node: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name((ns, name)))
}

fn children<'a, 'i: 'a>(
    node: Node<'a, 'i>,
    ns: &'static str,
    name: &'static str,
) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children().filter(move |c| c.has_tag_name((ns, name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_shared_key_from_hex() {
        assert!(PreSharedKey::from_hex(" 12345678901234567890123456789012\n").is_ok());
        assert_eq!(
            PreSharedKey::from_hex("1234").unwrap_err(),
            PskcError::BadPreSharedKey
        );
        assert_eq!(
            PreSharedKey::from_hex("zz345678901234567890123456789012").unwrap_err(),
            PskcError::BadPreSharedKey
        );
        assert_eq!(
            format!("{:?}", PreSharedKey::new([1; 16])),
            "PreSharedKey([redacted])"
        );
    }

    #[test]
    fn document_level_errors() {
        let none = KeyPolicy::Rfc4226;
        assert_eq!(parse(b"\xff", None, none).unwrap_err(), PskcError::NotUtf8);
        assert!(matches!(
            parse(b"<a>", None, none).unwrap_err(),
            PskcError::Xml { line: 1, .. }
        ));
        assert_eq!(
            parse(b"<a/>", None, none).unwrap_err(),
            PskcError::NotKeyContainer
        );
        assert_eq!(
            parse(
                br#"<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc" Version="2.0"/>"#,
                None,
                none
            )
            .unwrap_err(),
            PskcError::UnsupportedVersion
        );
        let dtd = br#"<!DOCTYPE x [<!ENTITY a "aaaa">]><KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc" Version="1.0"/>"#;
        assert!(matches!(
            parse(dtd, None, none).unwrap_err(),
            PskcError::Xml { .. }
        ));
        assert_eq!(
            parse(
                br#"<KeyContainer xmlns="urn:ietf:params:xml:ns:keyprov:pskc" Version="1.0"/>"#,
                None,
                none
            )
            .unwrap(),
            vec![]
        );
    }
}
