//! The server side of Telegram's cloud password check (SRP-2048, <https://core.telegram.org/api/srp>).
//!
//! The server knows the password, so it derives the verifier `v = g^x mod p` itself
//! (`x = PH2(password, salt1, salt2)`), hands out `B = k·v + g^b mod p` with `account.password`,
//! and checks the client's `M1` against its own: `S = (A · v^u)^b mod p`, `K = H(S)`,
//! `M1 = H(H(p) xor H(g) | H(salt1) | H(salt2) | A | B | K)`. A client that computes
//! `M1` from a different password gets a different `S`, so the proof really tests the password.

use hmac::Hmac;
use num_bigint::BigUint;
use srp_sha2::{Digest, Sha256, Sha512};

/// Telegram's 2048-bit safe prime (the one its servers send), with generator 3.
pub const P_HEX: &str = "c71caeb9c6b1c9048e6c522f70f13f73980d40238e3e21c14934d037563d930f\
48198a0aa7c14058229493d22530f4dbfa336f6e0ac925139543aed44cce7c37\
20fd51f69458705ac68cd4fe6b6b13abdc9746512969328454f18faf8c595f64\
2477fe96bb2a941d5bcd1d4ac8cc49880708fa9b378e3c4f3a9060bee67cf9a4\
a4a695811051907e162753b56b0f6b410dba74d8a84b2a14b3144e0ef1284754\
fd17ed950d5965b4b9dd46582db1178d169c6bc465b0d6ff9ca3928fef5b9ae4\
e418fc15e83ebea0f87fa9ff5eed70050ded2849f47bf959d956850ce929851f\
0d8115f635b105ee2e4e15d04b2454bf6f4fadf034b10403119cd8e3b92fcc5b";

pub const G: i32 = 3;

/// The prime as 256 big-endian bytes.
pub fn p_bytes() -> Vec<u8> {
    (0..P_HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&P_HEX[i..i + 2], 16).unwrap())
        .collect()
}

fn h(parts: &[&[u8]]) -> [u8; 32] {
    let mut d = Sha256::new();
    for p in parts {
        d.update(p);
    }
    d.finalize().into()
}

fn pad(n: &BigUint) -> [u8; 256] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; 256];
    out[256 - bytes.len()..].copy_from_slice(&bytes);
    out
}

/// PH2(password, salt1, salt2) = SH(pbkdf2(sha512, PH1(password, salt1, salt2), salt1, 100000), salt2).
fn ph2(password: &[u8], salt1: &[u8], salt2: &[u8]) -> [u8; 32] {
    let sh = |data: &[u8], salt: &[u8]| h(&[salt, data, salt]);
    let ph1 = sh(&sh(password, salt1), salt2);
    let mut dk = [0u8; 64];
    pbkdf2::pbkdf2::<Hmac<Sha512>>(&ph1, salt1, 100_000, &mut dk).unwrap();
    sh(&dk, salt2)
}

/// One password challenge: what `account.getPassword` hands out and what checks the answer.
#[derive(Debug, Clone)]
pub struct Challenge {
    pub srp_id: i64,
    pub salt1: Vec<u8>,
    pub salt2: Vec<u8>,
    /// The server's public value `B`.
    pub srp_b: Vec<u8>,
    /// Random bytes the client takes its secret `a` from.
    pub secure_random: Vec<u8>,
    v: BigUint,
    b: BigUint,
}

impl Challenge {
    /// A challenge for `password`; `seed` makes the secrets differ between challenges.
    pub fn new(password: &str, srp_id: i64, seed: u64) -> Challenge {
        let p = BigUint::from_bytes_be(&p_bytes());
        let g = BigUint::from(G as u32);
        let salt1 = h(&[b"salt1", &seed.to_le_bytes()])[..8].to_vec();
        let salt2 = h(&[b"salt2", &seed.to_le_bytes()])[..16].to_vec();
        let x = BigUint::from_bytes_be(&ph2(password.as_bytes(), &salt1, &salt2));
        let v = g.modpow(&x, &p);
        let mut b_bytes = Vec::new();
        let mut secure_random = Vec::new();
        for i in 0..8u8 {
            b_bytes.extend_from_slice(&h(&[b"b", &seed.to_le_bytes(), &[i]]));
            secure_random.extend_from_slice(&h(&[b"a", &seed.to_le_bytes(), &[i]]));
        }
        let b = BigUint::from_bytes_be(&b_bytes);
        let k = BigUint::from_bytes_be(&h(&[&p_bytes(), &pad(&g)]));
        let big_b = (k * &v + g.modpow(&b, &p)) % &p;
        Challenge {
            srp_id,
            salt1,
            salt2,
            srp_b: pad(&big_b).to_vec(),
            secure_random,
            v,
            b,
        }
    }

    /// True when `m1` proves knowledge of the password for the client value `a` (`g_a`).
    pub fn check(&self, g_a: &[u8], m1: &[u8]) -> bool {
        let p_raw = p_bytes();
        let p = BigUint::from_bytes_be(&p_raw);
        let g = BigUint::from(G as u32);
        let a = BigUint::from_bytes_be(g_a);
        if a == BigUint::from(0u8) || a >= p {
            return false;
        }
        let a_pad = pad(&a);
        let u = BigUint::from_bytes_be(&h(&[&a_pad, &self.srp_b]));
        let s = (a * self.v.modpow(&u, &p)).modpow(&self.b, &p);
        let k = h(&[&pad(&s)]);
        let h_p = h(&[&p_raw]);
        let h_g = h(&[&pad(&g)]);
        let xored: Vec<u8> = h_p.iter().zip(h_g.iter()).map(|(x, y)| x ^ y).collect();
        let want = h(&[
            &xored,
            &h(&[&self.salt1]),
            &h(&[&self.salt2]),
            &a_pad,
            &self.srp_b,
            &k,
        ]);
        want.as_slice() == m1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_proof_passes_for_the_right_password_only() {
        let c = Challenge::new("hunter2", 1, 7);
        let p = p_bytes();
        let proof = |password: &str| {
            grammers_crypto::two_factor_auth::calculate_2fa(
                &c.salt1,
                &c.salt2,
                &p,
                &G,
                c.srp_b.clone(),
                c.secure_random.clone(),
                password,
            )
        };
        let (m1, g_a) = proof("hunter2");
        assert!(c.check(&g_a, &m1));
        let (m1, g_a) = proof("hunter3");
        assert!(!c.check(&g_a, &m1));
    }
}
