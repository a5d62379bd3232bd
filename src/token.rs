//! Bearer tokens: generation, hashing and the shape a client-supplied token must have.
//!
//! Only the SHA-256 of a token is ever stored or compared; the token itself is returned to
//! the caller once and never written anywhere.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::TryRngCore;
use sha2::{Digest, Sha256};

/// 256 bits of entropy per generated token.
pub const TOKEN_BYTES: usize = 32;
pub const MIN_TOKEN_LEN: usize = 32;
pub const MAX_TOKEN_LEN: usize = 1024;

pub type TokenHash = [u8; 32];

/// A fresh token from the operating system's generator, URL-safe base64 without padding.
pub fn generate() -> Result<String, rand::rand_core::OsError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.try_fill_bytes(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash(value: &str) -> TokenHash {
    Sha256::digest(value.as_bytes()).into()
}

/// Why a client-supplied token is refused, phrased to follow the argument's name.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenProblem {
    TooShort(usize),
    TooLong(usize),
    BadCharacter,
}

impl std::fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooShort(n) => {
                write!(f, "has {n} characters, fewer than the minimum of {MIN_TOKEN_LEN}")
            }
            Self::TooLong(n) => write!(f, "has {n} characters, more than the maximum of {MAX_TOKEN_LEN}"),
            Self::BadCharacter => {
                write!(f, "contains a character outside visible ASCII (whitespace or control)")
            }
        }
    }
}

/// Tokens are opaque, but must be 32..=1024 visible ASCII characters: whitespace or a control
/// character in a token is always a client bug (a stray "Bearer " prefix, a newline).
pub fn check(token: &str) -> Result<(), TokenProblem> {
    match token.chars().count() {
        n if n < MIN_TOKEN_LEN => Err(TokenProblem::TooShort(n)),
        n if n > MAX_TOKEN_LEN => Err(TokenProblem::TooLong(n)),
        _ if !token.bytes().all(|b| b.is_ascii_graphic()) => Err(TokenProblem::BadCharacter),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_43_url_safe_characters_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
        assert_eq!(check(&a), Ok(()));
    }

    #[test]
    fn hash_is_sha256() {
        // SHA-256("abc") from FIPS 180-2.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got: String = hash("abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn length_bounds_are_inclusive() {
        assert_eq!(check(&"a".repeat(31)), Err(TokenProblem::TooShort(31)));
        assert_eq!(check(&"a".repeat(32)), Ok(()));
        assert_eq!(check(&"a".repeat(1024)), Ok(()));
        assert_eq!(check(&"a".repeat(1025)), Err(TokenProblem::TooLong(1025)));
    }

    proptest::proptest! {
        /// `check` is exactly its documented rule, for any text at all.
        #[test]
        fn check_accepts_exactly_32_to_1024_visible_ascii_characters(token in "(?s).{0,1100}") {
            let chars = token.chars().count();
            let visible = token.bytes().all(|b| b.is_ascii_graphic());
            let accepted = check(&token).is_ok();
            proptest::prop_assert_eq!(accepted, (MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&chars) && visible);
        }

        /// A refusal never carries the token: its message is the same for every token of a length.
        #[test]
        fn a_refusal_says_nothing_of_the_token(token in "(?s).{0,1100}") {
            if let Err(problem) = check(&token) {
                let message = problem.to_string();
                proptest::prop_assert!(message.len() < 80);
                let start: String = token.chars().take(8).collect();
                proptest::prop_assert!(start.chars().count() < 8 || !message.contains(&start));
            }
        }

        /// Distinct tokens have distinct hashes, and a hash is a pure function of its token.
        #[test]
        fn hashing_is_deterministic_and_separates_tokens(a in "[ -~]{32,64}", b in "[ -~]{32,64}") {
            proptest::prop_assert_eq!(hash(&a), hash(&a));
            proptest::prop_assert_eq!(hash(&a) == hash(&b), a == b);
        }
    }

    #[test]
    fn generated_tokens_always_pass_the_client_token_rules() {
        for _ in 0..1000 {
            let token = generate().unwrap();
            assert_eq!(check(&token), Ok(()));
            assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), TOKEN_BYTES);
        }
    }

    #[test]
    fn whitespace_and_non_ascii_are_refused() {
        assert_eq!(check(&format!("Bearer {}", "a".repeat(40))), Err(TokenProblem::BadCharacter));
        assert_eq!(check(&format!("{}\n", "a".repeat(40))), Err(TokenProblem::BadCharacter));
        assert_eq!(check(&"é".repeat(40)), Err(TokenProblem::BadCharacter));
        assert_eq!(check(""), Err(TokenProblem::TooShort(0)));
        assert_eq!(check(&" ".repeat(2000)), Err(TokenProblem::TooLong(2000)));
    }
}
