//! MTProto 2.0 encryption, server side.
//!
//! The client encrypts with `x = 0` and expects answers encrypted with `x = 8`
//! (<https://core.telegram.org/mtproto/description#defining-aes-key-and-initialization-vector>);
//! a server does the opposite. AES-256-IGE itself comes from `grammers-crypto`.

use grammers_crypto::aes;
use sha1::Digest as _;
use sha2::Digest as _;

/// A permanent authorization key shared with the client, and its id.
#[derive(Clone)]
pub struct AuthKey {
    data: [u8; 256],
    id: [u8; 8],
}

impl AuthKey {
    /// The key from its 256 bytes; its id is bytes 12..20 of its SHA-1.
    pub fn new(data: [u8; 256]) -> Self {
        let sha = sha1::Sha1::digest(data);
        let mut id = [0; 8];
        id.copy_from_slice(&sha[12..20]);
        AuthKey { data, id }
    }

    /// The 8-byte id that prefixes every encrypted packet.
    pub fn id(&self) -> [u8; 8] {
        self.id
    }

    /// The key's bytes.
    pub fn bytes(&self) -> [u8; 256] {
        self.data
    }
}

/// Why a packet from the client could not be decrypted.
#[derive(Debug, PartialEq)]
pub enum CryptoError {
    /// Too short, or not a whole number of AES blocks.
    BadLength(usize),
    /// The packet names another key.
    UnknownKey([u8; 8]),
    /// The message key does not match the decrypted text: wrong key or damaged packet.
    BadMsgKey,
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `aes_key` and `aes_iv` for `msg_key`, with `x` = 0 (client → server) or 8 (server → client).
fn key_iv(key: &AuthKey, msg_key: &[u8; 16], x: usize) -> ([u8; 32], [u8; 32]) {
    let a = sha256(&[msg_key, &key.data[x..x + 36]]);
    let b = sha256(&[&key.data[40 + x..40 + x + 36], msg_key]);
    let mut aes_key = [0; 32];
    aes_key[..8].copy_from_slice(&a[..8]);
    aes_key[8..24].copy_from_slice(&b[8..24]);
    aes_key[24..].copy_from_slice(&a[24..]);
    let mut aes_iv = [0; 32];
    aes_iv[..8].copy_from_slice(&b[..8]);
    aes_iv[8..24].copy_from_slice(&a[8..24]);
    aes_iv[24..].copy_from_slice(&b[24..]);
    (aes_key, aes_iv)
}

/// `msg_key` of a plaintext (padding included) sent with `x`.
fn msg_key(key: &AuthKey, plaintext: &[u8], x: usize) -> [u8; 16] {
    let large = sha256(&[&key.data[88 + x..88 + x + 32], plaintext]);
    let mut k = [0; 16];
    k.copy_from_slice(&large[8..24]);
    k
}

/// The key id at the start of an encrypted packet (None for an unencrypted one, id 0).
pub fn packet_key_id(packet: &[u8]) -> Option<[u8; 8]> {
    let id: [u8; 8] = packet.get(..8)?.try_into().ok()?;
    (id != [0; 8]).then_some(id)
}

/// Decrypts a packet from the client: `auth_key_id`, `msg_key`, ciphertext. Returns the
/// plaintext (salt, session id, message, padding).
pub fn decrypt_from_client(key: &AuthKey, packet: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if packet.len() < 24 + 16 || !(packet.len() - 24).is_multiple_of(16) {
        return Err(CryptoError::BadLength(packet.len()));
    }
    let id: [u8; 8] = packet[..8].try_into().unwrap();
    if id != key.id {
        return Err(CryptoError::UnknownKey(id));
    }
    let sent_key: [u8; 16] = packet[8..24].try_into().unwrap();
    let (aes_key, aes_iv) = key_iv(key, &sent_key, 0);
    let mut plain = packet[24..].to_vec();
    aes::ige_decrypt(&mut plain, &aes_key, &aes_iv);
    if msg_key(key, &plain, 0) != sent_key {
        return Err(CryptoError::BadMsgKey);
    }
    Ok(plain)
}

/// Encrypts a plaintext (salt, session id, message) for the client, adding 12 to 1024 bytes of
/// padding as MTProto 2.0 requires. `noise` fills the padding.
pub fn encrypt_for_client(
    key: &AuthKey,
    plaintext: &[u8],
    noise: &mut impl FnMut() -> u8,
) -> Vec<u8> {
    let mut plain = plaintext.to_vec();
    let pad = 16 + (16 - plain.len() % 16);
    plain.extend((0..pad).map(|_| noise()));
    let k = msg_key(key, &plain, 8);
    let (aes_key, aes_iv) = key_iv(key, &k, 8);
    aes::ige_encrypt(&mut plain, &aes_key, &aes_iv);
    let mut packet = Vec::with_capacity(24 + plain.len());
    packet.extend_from_slice(&key.id);
    packet.extend_from_slice(&k);
    packet.extend_from_slice(&plain);
    packet
}
